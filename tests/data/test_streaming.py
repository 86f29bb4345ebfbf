"""Tests for selfsup.data.streaming: uint8 batches keyed by step from a tiny generated ImageFolder."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.core.errors import DataError
from selfsup.data.datasets import ImageDataset, channel_stats
from selfsup.data.imagefolder import load_imagefolder
from selfsup.data.streaming import (
    SequentialBatches,
    StreamingImageFolder,
    decoded_gb,
    open_imagefolder,
    stream_batches,
)

SIZE = 8  # the canvas side


class Permutation:
    """A seeded permutation per epoch, B per step (the trainer's EpochSampler protocol)."""

    def __init__(self, n: int, batch: int, seed: int):
        self.n, self.batch, self.seed = n, batch, seed

    def indices(self, step: int, rank: int, world: int) -> torch.Tensor:
        epoch, i = divmod(step, self.n // self.batch)
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1000 + epoch))
        return perm[i * self.batch:(i + 1) * self.batch].tensor_split(world)[rank]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """3 classes x 6 images of mixed sizes, aspect ratios, modes and formats."""
    root = tmp_path_factory.mktemp("stream") / "train"
    rng = np.random.default_rng(0)
    sizes = [(12, 12), (20, 14), (9, 16), (32, 32), (8, 8), (15, 11)]
    for c, name in enumerate(["cat", "dog", "emu"]):
        (root / name).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            img = Image.fromarray(pixels)
            if i == 4:
                img = img.convert("L")
            img.save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.fixture()
def stream(folder, tmp_path) -> StreamingImageFolder:
    return StreamingImageFolder.open(folder, image_size=SIZE, cache_dir=tmp_path)


def _collect(batches) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    return [(step, images.clone(), labels.clone()) for step, images, labels in batches]


def test_open_lists_the_split(stream, folder):
    assert len(stream) == 18 and stream.classes == ["cat", "dog", "emu"]
    assert stream.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert stream.shape == (3, SIZE, SIZE) and stream.root == folder.resolve()


def test_batches_are_uint8_canvases_in_step_order(stream):
    sampler = Permutation(len(stream), 4, seed=3)
    got = _collect(stream_batches(stream, sampler, range(0, 9), num_workers=0))
    assert [step for step, _, _ in got] == list(range(9))
    for step, images, labels in got:
        assert images.dtype == torch.uint8 and images.shape == (4, 3, SIZE, SIZE)
        assert labels.dtype == torch.int64
        assert torch.equal(labels, stream.labels[sampler.indices(step, 0, 1)])


def test_same_bytes_as_the_in_memory_path(stream, folder, tmp_path):
    memory = load_imagefolder(folder, image_size=SIZE, cache_dir=tmp_path / "mem")
    sampler = Permutation(len(stream), 6, seed=1)
    for step, images, labels in stream_batches(stream, sampler, range(4), num_workers=0):
        idx = sampler.indices(step, 0, 1)
        assert torch.equal(images, memory.images[idx]) and torch.equal(labels, memory.labels[idx])


def test_workers_and_resume_reproduce_the_order(stream):
    sampler = Permutation(len(stream), 6, seed=7)
    full = _collect(stream_batches(stream, sampler, range(0, 7), num_workers=0))
    again = _collect(stream_batches(stream, sampler, range(0, 7), num_workers=2, prefetch_factor=1))
    resumed = _collect(stream_batches(stream, sampler, range(4, 7), num_workers=2))
    for (s1, x1, y1), (s2, x2, y2) in zip(full, again):
        assert s1 == s2 and torch.equal(x1, x2) and torch.equal(y1, y2)
    for (s1, x1, y1), (s2, x2, y2) in zip(full[4:], resumed):
        assert s1 == s2 and torch.equal(x1, x2) and torch.equal(y1, y2)


def test_process_shares_partition_the_global_batch(stream):
    sampler = Permutation(len(stream), 6, seed=0)
    whole = next(stream_batches(stream, sampler, range(2, 3), num_workers=0))[1]
    shares = [next(stream_batches(stream, sampler, range(2, 3), rank=r, world=2, num_workers=0))[1]
              for r in range(2)]
    assert [len(s) for s in shares] == [3, 3] and torch.equal(torch.cat(shares), whole)


def test_trainer_epoch_sampler_keeps_the_protocol(stream):
    from selfsup.engine.trainer import EpochSampler

    sampler = EpochSampler(len(stream), 6, seed=0)
    steps = [step for step, _, _ in stream_batches(stream, sampler, range(0, 6), num_workers=0)]
    assert steps == list(range(6))


def test_sequential_batches_cover_the_split_once(stream):
    seq = SequentialBatches(len(stream), 5)
    assert seq.num_steps == 4
    got = _collect(stream_batches(stream, seq, range(seq.num_steps), num_workers=0))
    assert [len(x) for _, x, _ in got] == [5, 5, 5, 3]
    assert torch.equal(torch.cat([y for _, _, y in got]), stream.labels)
    assert torch.cat([seq.indices(1, r, 2) for r in range(2)]).tolist() == [5, 6, 7, 8, 9]


def test_stats_are_exact_when_the_sample_is_the_split(folder, tmp_path):
    s = StreamingImageFolder.open(folder, image_size=SIZE, cache_dir=tmp_path, stats_samples=10_000)
    mean, std = channel_stats(s.decode(range(len(s)))[0])
    assert np.allclose(s.mean, mean) and np.allclose(s.std, std)
    cached = StreamingImageFolder.open(folder, image_size=SIZE, cache_dir=tmp_path, stats_samples=10_000)
    assert cached.mean == s.mean and cached.std == s.std
    assert list((tmp_path / "imagefolder").glob("train-stream-*.json"))


def test_threshold_picks_memory_or_streaming(folder, tmp_path):
    small = open_imagefolder(folder, image_size=SIZE, cache_dir=tmp_path, in_memory_max_gb=1.0)
    big = open_imagefolder(folder, image_size=SIZE, cache_dir=tmp_path, in_memory_max_gb=0.0)
    assert isinstance(small, ImageDataset) and isinstance(big, StreamingImageFolder)
    assert decoded_gb(18, SIZE, SIZE) == pytest.approx(18 * 3 * SIZE * SIZE / 2**30)
    assert small.images.shape[1:] == big.shape


def test_native_size_canvas(tmp_path):
    root = tmp_path / "native"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (10, 10), (40 * i, 10, 200)).save(root / c / f"{i}.png")
    s = StreamingImageFolder.open(root, image_size=None, cache_dir=tmp_path)
    assert s.image_size == 10 and s.decode([0, 5])[0].shape == (2, 3, 10, 10)


def test_unreadable_file_is_replaced_or_fatal(folder, tmp_path):
    import shutil

    root = tmp_path / "bad"
    shutil.copytree(folder, root)
    (root / "cat" / "0.jpg").write_bytes(b"not a jpeg")
    s = StreamingImageFolder.open(root, image_size=SIZE, cache_dir=tmp_path)
    seq = SequentialBatches(len(s), 6)
    with pytest.warns(UserWarning, match=r"cat/0\.jpg"):
        _, images, labels = next(stream_batches(s, seq, range(1), num_workers=0))
    assert images.shape == (6, 3, SIZE, SIZE) and torch.equal(images[0], images[1])
    s.on_bad_file = "error"
    with pytest.raises(DataError, match=r"cat/0\.jpg"):
        next(stream_batches(s, seq, range(1), num_workers=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a batch without the bad file: no warning
        next(stream_batches(s, seq, range(1, 2), num_workers=0))


# --------------------------------------------------------------------------- wired into training and evaluation


def _jpeg_folder(root: Path, classes: int = 4, per_class: int = 12, seed: int = 0) -> Path:
    """``classes`` x ``per_class`` JPEGs of mixed sizes (decoded to a 16-px canvas by the tests)."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            w, h = [(16, 16), (24, 18), (17, 30), (40, 40)][i % 4]
            base = rng.integers(0, 256, (1, 1, 3)) + 60 * c
            pixels = np.clip(base + rng.integers(-40, 41, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i:02d}.jpg", quality=80)
    return root


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> Path:
    return _jpeg_folder(tmp_path_factory.mktemp("jpegs") / "train")


TINY = ["data.name=imagefolder", "data.image_size=16", "backbone.name=test_resnet", "backbone.small_stem=true",
        "method.proj_hidden_dim=32", "method.proj_dim=16", "trainer.batch_size=16", "trainer.epochs=3",
        "trainer.warmup_epochs=1", "trainer.log_every=1", "trainer.optimizer=sgd", "trainer.lr=0.5",
        "eval.at_end=false", "run.plots=false", "run.tensorboard=false"]


def _config(tmp_path, train_dir, *extra):
    from selfsup.config import load_config

    return load_config("simclr-digits", [*TINY, f"data.train={train_dir}", f"data.val={train_dir}",
                                         f"data.cache_dir={tmp_path / 'cache'}", f"run.dir={tmp_path / 'run'}",
                                         *extra])


def _trainer(cfg, tmp_path):
    from selfsup.data import open_split
    from selfsup.engine.build import build_method, make_accelerator
    from selfsup.engine.trainer import Trainer

    data = open_split(cfg.data, "train", seed=cfg.trainer.seed)
    return Trainer(cfg, build_method(cfg, data), data, tmp_path / "run", make_accelerator(cfg)), data


def test_open_split_streams_above_the_threshold_or_when_asked(jpegs, tmp_path):
    from selfsup.config import load_config
    from selfsup.core.errors import ConfigError
    from selfsup.data import open_split

    assert isinstance(open_split(_config(tmp_path, jpegs).data, "train"), ImageDataset)  # 48 x 3 x 16 x 16 < 8 GiB
    small = open_split(_config(tmp_path, jpegs, "data.in_memory_max_gb=1e-6").data, "train")
    assert isinstance(small, StreamingImageFolder) and small.shape == (3, 16, 16) and len(small) == 48
    assert "48 images decoded to uint8 3x16x16" in small.describe() and "estimated on 48" in small.describe()
    forced = open_split(_config(tmp_path, jpegs, "data.streaming=always", "data.workers=3").data, "val")
    assert isinstance(forced, StreamingImageFolder) and forced.setting == "data.val" and forced.workers == 3
    never = open_split(_config(tmp_path, jpegs, "data.in_memory_max_gb=0", "data.streaming=never").data, "train")
    assert isinstance(never, ImageDataset)
    sub = open_split(_config(tmp_path, jpegs, "data.streaming=always", "data.num_samples=20").data, "train")
    sub_mem = open_split(_config(tmp_path, jpegs, "data.num_samples=20").data, "train")
    assert len(sub) == 20 and torch.equal(sub.decode(range(20))[0], sub_mem.images)  # the same subset
    with pytest.raises(ConfigError, match="data.streaming"):
        load_config("simclr-digits", ["data.streaming=always"])


@pytest.mark.parametrize("workers", [0, 2])
def test_trainer_streams_the_in_memory_batches(jpegs, tmp_path, workers):
    """Same seed: the streamed trainer takes the same uint8 pixels and labels at every step, and so
    makes the same views, as the in-memory trainer (over an epoch boundary, and after a jump back)."""
    memory, mem_data = _trainer(_config(tmp_path / "m", jpegs), tmp_path / "m")
    stream, stream_data = _trainer(_config(tmp_path / "s", jpegs, "data.streaming=always", f"data.workers={workers}"),
                                   tmp_path / "s")
    assert isinstance(mem_data, ImageDataset) and isinstance(stream_data, StreamingImageFolder)
    assert stream_data.mean == mem_data.mean and stream_data.std == mem_data.std  # sample = whole split here
    try:
        for step in [0, 1, 2, 3, 4, 1, 2]:  # 3 steps per epoch; then back, as a resume would
            idx = memory.sampler.indices(step, 0, 1)
            pixels, labels = stream.stream.batch(step) if step < 3 else (None, None)
            if pixels is not None:
                assert torch.equal(pixels, mem_data.images[idx]) and torch.equal(labels, mem_data.labels[idx])
            (views_m, labels_m), = list(memory.make_batches(step))
            (views_s, labels_s), = list(stream.make_batches(step))
            assert torch.equal(labels_m, labels_s) and torch.equal(labels_s, mem_data.labels[idx])
            assert len(views_m) == len(views_s) == 2
            for a, b in zip(views_m, views_s):
                assert torch.equal(a, b)
    finally:
        stream.stream.close()


def _metrics(run_dir: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _final_weights(run_dir: Path) -> dict:
    from selfsup.engine.checkpoint import list_checkpoints, load_checkpoint

    return load_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1])["model"]


def test_streaming_run_resumed_mid_epoch_equals_uninterrupted_and_in_memory(jpegs, tmp_path):
    from selfsup.runs.train import train

    stream = ["data.streaming=always", "data.workers=2", "trainer.epochs=2"]
    train(_config(tmp_path / "memory", jpegs, "trainer.epochs=2", "resume=never"))
    train(_config(tmp_path / "full", jpegs, *stream, "resume=never"))
    part = _config(tmp_path / "part", jpegs, *stream, "trainer.max_steps=4", "trainer.checkpoint_every=100")
    train(part)  # stops at step 4: one step into the second epoch (3 steps per epoch)
    train(_config(tmp_path / "part", jpegs, *stream))  # resume=auto continues at step 4
    memory, full, resumed = (_metrics(tmp_path / d / "run") for d in ("memory", "full", "part"))
    assert [r["step"] for r in resumed] == list(range(1, 7)) == [r["step"] for r in full]
    for a, b, c in zip(memory, full, resumed):
        assert a["lr"] == b["lr"] == c["lr"]
        assert b["loss"] == pytest.approx(c["loss"], rel=1e-6, abs=1e-7)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7)
    w_mem, w_full, w_part = (_final_weights(tmp_path / d / "run") for d in ("memory", "full", "part"))
    for key in w_full:
        assert torch.equal(w_full[key], w_part[key]), key
        assert torch.allclose(w_full[key].float(), w_mem[key].float(), rtol=1e-5, atol=1e-6), key


def test_streamed_evaluation_equals_in_memory(jpegs, tmp_path):
    """Features are extracted batch by batch from the workers, in file order; the protocols agree."""
    from selfsup.data import open_split
    from selfsup.engine.build import build_method
    from selfsup.evaluation.features import extract_features
    from selfsup.evaluation.protocols import evaluate

    cfg_m = _config(tmp_path, jpegs, "eval.linear=false", "eval.knn_k=[3]")
    cfg_s = _config(tmp_path, jpegs, "eval.linear=false", "eval.knn_k=[3]", "data.streaming=always",
                    "data.workers=2")
    mem, streamed = open_split(cfg_m.data, "train", seed=cfg_m.trainer.seed), open_split(cfg_s.data, "train", seed=cfg_s.trainer.seed)
    encoder = build_method(cfg_m, mem).encoder.eval()
    f_mem = extract_features(encoder, mem.images, mem.mean, mem.std, batch_size=10, progress=False)
    f_str = extract_features(encoder, streamed, streamed.mean, streamed.std, batch_size=10, progress=False)
    assert f_str.shape == (48, encoder.num_features) and torch.equal(f_mem, f_str)
    r_mem = evaluate(encoder, mem, open_split(cfg_m.data, "val", seed=cfg_m.trainer.seed), cfg_m.eval, progress=False)
    r_str = evaluate(encoder, streamed, open_split(cfg_s.data, "val", seed=cfg_s.trainer.seed), cfg_s.eval, progress=False)
    assert r_mem == r_str and 0 <= r_str["knn_k3"]["top1"] <= 1


def test_streaming_run_trains_exports_and_evaluates(jpegs, tmp_path):
    import json

    from selfsup.runs.train import train

    cfg = _config(tmp_path, jpegs, "data.streaming=always", "data.workers=1", "trainer.max_steps=2",
                  "eval.at_end=true", "eval.linear=false", "eval.knn_k=[3]")
    results = train(cfg)
    run = tmp_path / "run"
    assert 0 <= results["knn_k3"]["top1"] <= 1 and json.loads((run / "eval.json").read_text()) == results
    exported = json.loads((run / "encoder" / "config.json").read_text())
    assert exported["pretrained_cfg"]["input_size"] == [3, 16, 16]


def test_streaming_bad_files_follow_on_bad_file(jpegs, tmp_path):
    """An empty file is dropped at the scan as the in-memory path drops it (indices still agree);
    a corrupt one is replaced in its batch (skip) or stops the run naming it (error)."""
    import shutil

    from selfsup.runs.train import train

    root = tmp_path / "bad"
    shutil.copytree(jpegs, root)
    (root / "c1" / "03.jpg").write_bytes(b"")
    with pytest.warns(UserWarning, match=r"c1/03\.jpg"):
        memory, mem_data = _trainer(_config(tmp_path / "m", root), tmp_path / "m")
    with pytest.warns(UserWarning, match=r"c1/03\.jpg"):
        stream, _ = _trainer(_config(tmp_path / "s", root, "data.streaming=always", "data.workers=0"), tmp_path / "s")
    assert len(mem_data) == 47 and len(stream.data) == 47
    for step in range(3):
        (views_m, labels_m), = list(memory.make_batches(step))
        (views_s, labels_s), = list(stream.make_batches(step))
        assert torch.equal(labels_m, labels_s) and all(torch.equal(a, b) for a, b in zip(views_m, views_s))
    stream.stream.close()
    with pytest.raises(DataError, match=r"c1/03\.jpg"):
        _config_s = _config(tmp_path / "e", root, "data.streaming=always", "data.on_bad_file=error")
        _trainer(_config_s, tmp_path / "e")

    (root / "c1" / "03.jpg").unlink()
    (root / "c2" / "05.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    stream_args = ["data.streaming=always", "data.workers=2", "trainer.max_steps=3"]
    with pytest.warns(UserWarning, match=r"c2/05\.jpg"):
        train(_config(tmp_path / "skip", root, *stream_args))
    assert [r["step"] for r in _metrics(tmp_path / "skip" / "run")] == [1, 2, 3]
    with pytest.raises(DataError, match=r"c2/05\.jpg"):
        train(_config(tmp_path / "error", root, *stream_args, "data.on_bad_file=error"))
