"""The protocols together (selfsup.evaluation.protocols): features extracted once and reused, plots,
and the protocols' features over 2 processes (the ``eval_ranks`` group)."""
from __future__ import annotations

import pytest
import torch

from support import count_extractions, tiny_net
from support.eval_group import BATCH, WithHead, splits


def _image_split(n: int, seed: int):
    from selfsup.data import ImageDataset

    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    # Class-dependent brightness, so the features carry the label.
    images = (torch.randint(0, 100, (n, 3, 6, 6), generator=g) + 70 * labels.view(n, 1, 1, 1)).to(torch.uint8)
    return ImageDataset(images, labels, ["a", "b", "c"], (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_second_protocol_reuses_features_and_plots_are_written(monkeypatch, tmp_path):
    from selfsup.config import EvalConfig
    from selfsup.evaluation.protocols import evaluate

    calls = count_extractions(monkeypatch)
    net, train, val = tiny_net(), _image_split(60, 0), _image_split(30, 1)
    cfg = EvalConfig(knn_k=[5])
    knn = evaluate(net, train, val, cfg, protocols=["knn"], progress=False, cache_dir=tmp_path / "features")
    assert calls == [60, 30]
    linear = evaluate(net, train, val, cfg, protocols=["linear"], progress=False, cache_dir=tmp_path / "features")
    assert calls == [60, 30]  # the linear probe ran on the features the kNN run extracted
    assert set(knn) == {"knn_k5"} and set(linear) == {"linear"}
    pytest.importorskip("matplotlib")
    evaluate(net, train, val, cfg, protocols=["linear"], progress=False, cache_dir=tmp_path / "features",
             plots_dir=tmp_path / "plots")
    assert calls == [60, 30]
    for name in ("tsne.png", "confusion_linear.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- 2 processes


@pytest.mark.slow
@pytest.mark.distributed
def test_protocol_features_and_classifier_logits_match_one_process(eval_ranks):
    from selfsup.config import EvalConfig
    from selfsup.evaluation.protocols import evaluate, evaluation_features

    train, val = splits()
    model = WithHead()
    cfg = EvalConfig(knn_k=[3], batch_size=BATCH)
    reference = evaluation_features(model.encoder, train, val, cfg, progress=False, classifier=model)
    assert {k: v.shape[0] for k, v in reference.items()} == {"train": 20, "val": 11, "classifier": 11}
    for rank_result in eval_ranks[0]:
        assert rank_result["protocols"].keys() == reference.keys()
        for key, value in reference.items():
            torch.testing.assert_close(rank_result["protocols"][key], value, atol=1e-6, rtol=1e-6)
    # The protocols on the gathered features give what evaluate() extracting by itself gives.
    direct = evaluate(model.encoder, train, val, cfg, progress=False, classifier=model)
    assert evaluate(model.encoder, train, val, cfg, progress=False, classifier=model,
                    features=eval_ranks[0][0]["protocols"]) == direct
