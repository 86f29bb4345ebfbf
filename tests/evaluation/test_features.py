"""Frozen features (selfsup.evaluation.features): extraction against a manual forward, modes and state
left alone, the feature cache, and sharded extraction over 2 processes (the ``eval_ranks`` group)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.core.errors import DataError, SelfsupError
from selfsup.evaluation import extract_features
from support import MEAN, STD, count_extractions, tiny_net
from support.eval_group import BATCH, ROWS, group_images


def manual_features(
    net: nn.Module, images: torch.Tensor, size: int | None = None, antialias: bool = False
) -> torch.Tensor:
    x = images.float() / 255
    if size is not None:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    net.eval()
    with torch.no_grad():
        return net(x)


def test_extract_features_matches_manual_forward():
    net = tiny_net()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (7, 3, 10, 10), dtype=torch.uint8, generator=g)
    out = extract_features(net, images, MEAN, STD, batch_size=3, progress=False)
    assert out.shape == (7, 8) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert not out.is_inference()
    torch.testing.assert_close(out, manual_features(net, images), atol=1e-5, rtol=1e-5)
    resized = extract_features(net, images, torch.tensor(MEAN), list(STD), image_size=16, progress=False)
    torch.testing.assert_close(resized, manual_features(net, images, size=16), atol=1e-5, rtol=1e-5)
    shrunk = extract_features(net, images, MEAN, STD, image_size=6, progress=False)  # antialiased, like torchvision
    torch.testing.assert_close(shrunk, manual_features(net, images, 6, antialias=True), atol=1e-5, rtol=1e-5)


def test_extract_features_restores_modes_and_leaves_state_alone():
    net = tiny_net()
    images = torch.randint(0, 256, (5, 3, 6, 6), dtype=torch.uint8)
    stats = net[1].running_mean.clone()
    net.train()
    net[1].eval()  # mixed modes must survive as they are
    extract_features(net, images, MEAN, STD, progress=False)
    assert [m.training for m in net.modules()] == [True, True, False, True, True, True]
    assert torch.equal(net[1].running_mean, stats)
    net.eval()
    extract_features(net, images, MEAN, STD, progress=False)
    assert not any(m.training for m in net.modules())
    assert all(p.grad is None for p in net.parameters())


def test_extract_features_restores_mode_on_error_and_checks_input():
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x  # [B, C, H, W], not [B, D]

    broken = Broken().train()
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    with pytest.raises(SelfsupError):
        extract_features(broken, images, MEAN, STD, progress=False)
    assert broken.training
    net = tiny_net()
    with pytest.raises(DataError):
        extract_features(net, images.double(), MEAN, STD, progress=False)  # float32 = non-image data, accepted
    with pytest.raises(DataError):
        extract_features(net, images, (0.5, 0.5), STD, progress=False)
    with pytest.raises(DataError):
        extract_features(net, images[:0], MEAN, STD, progress=False)


def test_extract_features_constant_channel_std_zero_is_only_centred():
    net = tiny_net()
    images = torch.full((3, 3, 5, 5), 128, dtype=torch.uint8)
    out = extract_features(net, images, (128 / 255,) * 3, (0.0, 0.0, 0.0), progress=False)
    torch.testing.assert_close(out, net.eval()(torch.zeros(3, 3, 5, 5)).detach())


# ----------------------------------------------------------------------------- feature cache


def test_feature_cache_reuses_and_invalidates(monkeypatch, tmp_path):
    from selfsup.evaluation.features import cached_features

    calls = count_extractions(monkeypatch)
    net = tiny_net()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (9, 3, 6, 6), dtype=torch.uint8, generator=g)
    labels = torch.arange(9) % 3
    kw = dict(cache_dir=tmp_path, labels=labels, dataset_id="train", progress=False)
    first = cached_features(net, images, MEAN, STD, **kw)
    assert calls == [9] and len(list(tmp_path.glob("features-*.safetensors"))) == 1
    again = cached_features(net, images, MEAN, STD, **kw)
    assert calls == [9] and torch.equal(again, first)  # reused: the encoder did not run
    torch.testing.assert_close(first, manual_features(net, images), atol=1e-5, rtol=1e-5)

    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] += 1e-3  # one weight
    changed = cached_features(net, images, MEAN, STD, **kw)
    assert calls == [9, 9] and not torch.equal(changed, first)
    torch.testing.assert_close(changed, manual_features(net, images), atol=1e-5, rtol=1e-5)
    net[1].running_mean.add_(0.1)  # a buffer
    cached_features(net, images, MEAN, STD, **kw)
    assert len(calls) == 3
    cached_features(net, images, MEAN, (0.3, 0.3, 0.3), **kw)  # the transform
    cached_features(net, images, MEAN, STD, image_size=8, **kw)
    assert len(calls) == 5
    cached_features(net, images, MEAN, STD, **{**kw, "labels": labels.flip(0)})  # the labels
    other = images.clone()
    other[4, 0, 0, 0] ^= 1  # one pixel of a sampled image
    cached_features(net, other, MEAN, STD, **kw)
    cached_features(net, images, MEAN, STD, **{**kw, "dataset_id": "val"})  # the name
    assert len(calls) == 8
    cached_features(net, images, MEAN, STD, **kw)  # the last encoder/data/transform: still cached
    assert len(calls) == 8


def test_feature_cache_survives_a_corrupt_file(monkeypatch, tmp_path):
    from selfsup.evaluation.features import cached_features

    calls = count_extractions(monkeypatch)
    net, images = tiny_net(), torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    first = cached_features(net, images, MEAN, STD, cache_dir=tmp_path, progress=False)
    (file,) = tmp_path.glob("features-*.safetensors")
    file.write_bytes(b"garbage")
    again = cached_features(net, images, MEAN, STD, cache_dir=tmp_path, progress=False)
    assert len(calls) == 2 and torch.equal(again, first)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind


# ----------------------------------------------------------------------------- 2 processes


@pytest.mark.slow
@pytest.mark.distributed
def test_sharded_extraction_equals_one_process_and_runs_each_row_once(eval_ranks):
    from selfsup.evaluation.features import extract_features

    reference = extract_features(tiny_net(), group_images(), MEAN, STD, batch_size=BATCH, progress=False)
    assert reference.shape[0] == ROWS
    for rank_result, own_rows in zip(eval_ranks[0], (5, 4)):
        ext = rank_result["extraction"]
        assert ext["sharded"].shape == reference.shape
        torch.testing.assert_close(ext["sharded"], reference, atol=1e-6, rtol=1e-6)
        assert sum(ext["sharded_batches"]) == own_rows and max(ext["sharded_batches"]) <= BATCH
        # Without the flag each rank still runs everything itself: sharding is opt-in.
        assert sum(ext["unsharded_batches"]) == ROWS
        torch.testing.assert_close(ext["unsharded"], reference, atol=1e-6, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.distributed
def test_sharded_cache_is_written_and_read_by_rank_0_alone(eval_ranks):
    reference = eval_ranks[0][0]["extraction"]["sharded"]
    r0, r1 = (r["extraction"] for r in eval_ranks[0])
    assert len(r0["cache_files"]) == 1 and r0["cache_files"][0].startswith("features-")  # no temporary file left
    assert r1["cache_files"] is None  # rank 1 never touched its cache folder
    for ext, own_rows in ((r0, 5), (r1, 4)):
        assert sum(ext["cached_first_batches"]) == own_rows  # a miss: extracted in shards
        assert ext["cached_again_batches"] == []  # a hit on rank 0, sent to rank 1: nobody ran the encoder
        torch.testing.assert_close(ext["cached_first"], reference, atol=1e-6, rtol=1e-6)
        assert torch.equal(ext["cached_again"], ext["cached_first"])
