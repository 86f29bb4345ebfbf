"""A training run (selfsup.runs.train): the run directory; on 2 processes, rank 0 alone writes it, a
stopped run resumes exactly, and the evaluation at the end is sharded (the session groups
``two_and_one`` and ``eval_ranks`` of tests/conftest.py)."""
import json

import numpy as np
import pytest
import safetensors.torch
import torch

from selfsup.runs.train import train
from support import read_metrics, tiny_config
from support.training_group import TRAIN


def test_run_directory_contents(tmp_path):
    train(tiny_config(tmp_path, "trainer.max_steps=2"))
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "encoder" / "model.safetensors").is_file()
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    assert {"lr", "weight_decay", "images_per_s", "epoch"} <= set(rows[0])


def test_random_baseline_evaluates_both_inits_and_the_summary_names_the_stronger(tmp_path, capsys):
    """``eval.random_baseline``: timm's init (last BN of each block zeroed) and PyTorch's reset_parameters()
    (BN weight 1) are both evaluated, into their own files; the summary compares with the stronger one."""
    from selfsup.data import open_split
    from selfsup.runs.summary import RANDOM_BASELINES
    from selfsup.runs.train import random_init_encoder

    cfg = tiny_config(tmp_path, "trainer.max_steps=1", "eval.at_end=true", "eval.random_baseline=true",
                      "eval.knn_k=[3]", "eval.linear=false", "run.plots=false", "run.tensorboard=false")
    pretrained = train(cfg)
    out = capsys.readouterr().out
    data = open_split(cfg.data, "train", seed=cfg.trainer.seed)
    timm_bn = {n: m.weight for n, m in random_init_encoder(cfg, data, "timm_init").named_modules()
               if isinstance(m, torch.nn.BatchNorm2d)}
    default_bn = {n: m.weight for n, m in random_init_encoder(cfg, data, "torch_default_init").named_modules()
                  if isinstance(m, torch.nn.BatchNorm2d)}
    zeroed = [n for n, w in timm_bn.items() if not w.any()]  # timm's zero_init_last: one per residual block
    assert zeroed and timm_bn.keys() == default_bn.keys()
    assert all(torch.equal(w, torch.ones_like(w)) for w in default_bn.values())
    baselines = {key: json.loads((tmp_path / file).read_text()) for key, (file, _) in RANDOM_BASELINES.items()}
    assert all(base.keys() == pretrained.keys() for base in baselines.values())
    for _, label in RANDOM_BASELINES.values():  # the end-of-run table names both
        assert label in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["random_baselines"] == {k: {p: v["top1"] for p, v in b.items()} for k, b in baselines.items()}
    for protocol, row in summary["vs_random"].items():
        stronger = max(baselines, key=lambda k: baselines[k][protocol]["top1"])
        assert row["stronger_init"] == stronger and row["random"] == baselines[stronger][protocol]["top1"]
        assert row["margin"] == pytest.approx(pretrained[protocol]["top1"] - row["random"])
    assert set(summary["vs_random"]) == set(pretrained) and "the stronger random init" in out


# ----------------------------------------------------------------------------- 2 processes


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_run_writes_once_and_resumes_exactly(two_and_one):
    """One run directory written by rank 0 alone (each metrics row once, one encoder, one eval.json);
    a run stopped at a checkpoint and resumed on 2 processes ends with the uninterrupted run's weights."""
    from selfsup.engine.checkpoint import list_checkpoints, load_checkpoint

    out_dir = two_and_one[3]
    full, part = out_dir / "full", out_dir / "part"
    for run in (full, part):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2, 3, 4]
        assert (run / "encoder").is_dir() and (run / "config.yaml").is_file()
        assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-00000002.pt", "step-00000004.pt"]
    assert "knn_k3" in json.loads((full / "eval.json").read_text())
    a = load_checkpoint(list_checkpoints(full / "checkpoints")[-1])
    b = load_checkpoint(list_checkpoints(part / "checkpoints")[-1])
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    full_rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    part_rows = [json.loads(line) for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in full_rows] == [r["loss"] for r in part_rows]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_train_shards_evaluation_and_rank_0_alone_reports(eval_ranks):
    from safetensors import safe_open

    from selfsup.config import load_config
    from selfsup.data import open_split
    from selfsup.evaluation.features import extract_features
    from selfsup.evaluation.protocols import evaluate
    from selfsup.runs.export import load_encoder
    from selfsup.runs.summary import RANDOM_BASELINES
    from selfsup.runs.train import random_init_encoder

    (r0, r1), out_dir = eval_ranks
    run = out_dir / "run"
    assert r1["train"] == {} and "knn_k3" in r0["train"]
    assert json.loads((run / "eval.json").read_text()) == r0["train"]
    # The cached features (rank 0's gathered train and val features) are the exported encoder's.
    cfg = load_config("simclr-digits", [*TRAIN, "eval.random_baseline=true", f"run.dir={run}"])
    train, val = open_split(cfg.data, "train", seed=cfg.trainer.seed), open_split(cfg.data, "val", seed=cfg.trainer.seed)
    encoder = load_encoder(run / "encoder")
    files = sorted((run / "features").glob("features-*.safetensors"))
    assert len(files) == 2
    cached = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            cached[f.metadata()["dataset_id"]] = safetensors.torch.load_file(str(file))["features"]
    for name, data in (("train", train), ("val", val)):
        expected = extract_features(encoder, data.images, train.mean, train.std, progress=False)
        torch.testing.assert_close(cached[name], expected, atol=1e-5, rtol=1e-5)
    # The random-init baselines: the same encoders as one process builds, evaluated on all the rows.
    for init, (file, _) in RANDOM_BASELINES.items():
        baseline = json.loads((run / file).read_text())
        single = evaluate(random_init_encoder(cfg, train, init), train, val, cfg.eval, progress=False)
        assert baseline.keys() == single.keys()
        for key in single:  # features agree to ~1e-6: at most a near-tie may flip one prediction
            assert abs(baseline[key]["top1"] - single[key]["top1"]) <= 1 / len(val) + 1e-9, (init, key, baseline, single)
