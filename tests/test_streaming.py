"""Tests for selfsup.data.streaming: uint8 batches keyed by step from a tiny generated ImageFolder."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data.datasets import ImageDataset, channel_stats
from selfsup.data.imagefolder import load_imagefolder
from selfsup.data.streaming import (
    SequentialBatches,
    StreamingImageFolder,
    decoded_gb,
    open_imagefolder,
    stream_batches,
)
from selfsup.errors import DataError

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
    from selfsup.trainer import EpochSampler

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
