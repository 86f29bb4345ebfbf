"""Tests for selfsup.data.split: one protocol, two kinds (in memory, streamed), the same uint8 pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.config import DataConfig
from selfsup.data import Split, make_dataset, open_split

SIZE = 8  # the canvas side


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """3 classes x 6 images of mixed sizes, modes and formats (grey, PNG, JPEG)."""
    root = tmp_path_factory.mktemp("split") / "train"
    rng = np.random.default_rng(1)
    sizes = [(12, 12), (20, 14), (9, 16), (32, 32), (8, 8), (15, 11)]
    for c, name in enumerate(["ant", "bee", "cow"]):
        (root / name).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            if i == 4:
                img = img.convert("L")
            img.save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.fixture()
def kinds(folder, tmp_path) -> tuple[Split, Split]:
    """The same folder opened in memory and streamed (decoded in this process: no workers)."""
    config = dict(name="imagefolder", train=str(folder), val=str(folder), image_size=SIZE, cache_dir=str(tmp_path),
                  workers=0)
    memory = open_split(DataConfig(**config, streaming="never"), "train")
    streamed = open_split(DataConfig(**config, streaming="always"), "train")
    return memory, streamed


class Permutation:
    """A seeded permutation per epoch, B per step (the trainer's sampler protocol)."""

    def __init__(self, n: int, batch: int, seed: int = 0):
        self.n, self.batch, self.seed = n, batch, seed

    def indices(self, step: int, rank: int, world: int) -> torch.Tensor:
        epoch, i = divmod(step, self.n // self.batch)
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1000 + epoch))
        return perm[i * self.batch:(i + 1) * self.batch].tensor_split(world)[rank]


def test_both_kinds_satisfy_the_protocol(kinds):
    memory, streamed = kinds
    assert type(memory) is not type(streamed)  # two kinds, one protocol
    assert isinstance(memory, Split) and isinstance(streamed, Split) and not isinstance(torch.zeros(1), Split)
    for split in kinds:
        assert len(split) == 18 and split.shape == (3, SIZE, SIZE) and split.classes == ["ant", "bee", "cow"]
        assert split.labels.dtype == torch.int64 and split.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
        assert split.is_image and not split.has_padding and len(split.mean) == len(split.std) == 3
        assert isinstance(split.describe(), str) and "18" in split.describe()
        assert split.grey_to_rgb() is split  # already colour
    assert memory.random_access and not streamed.random_access
    assert memory.mean == streamed.mean and memory.std == streamed.std  # the sample is the whole split here


def test_the_same_indices_give_the_same_uint8_batches(kinds):
    memory, streamed = kinds
    for indices in (torch.tensor([5, 0, 17, 3, 3]), [11], range(18)):
        (pixels_m, labels_m), (pixels_s, labels_s) = memory.batch(indices), streamed.batch(indices)
        assert pixels_m.dtype == pixels_s.dtype == torch.uint8 and pixels_m.shape == (len(list(indices)), 3, SIZE, SIZE)
        assert torch.equal(pixels_m, pixels_s) and torch.equal(labels_m, labels_s)


def test_step_batches_follow_the_sampler_in_any_order(kinds):
    memory, streamed = kinds
    sampler = Permutation(18, 4, seed=2)
    sources = [split.step_batches(sampler, stop=8, device="cpu") for split in kinds]
    try:
        for step in [0, 1, 5, 2, 1]:  # over an epoch boundary (4 steps per epoch), then back (a resume)
            (pixels_m, labels_m), (pixels_s, labels_s) = (source.batch(step) for source in sources)
            want = memory.batch(sampler.indices(step, 0, 1))
            assert torch.equal(pixels_m, want[0]) and torch.equal(labels_m, want[1])
            assert torch.equal(pixels_m, pixels_s) and torch.equal(labels_m, labels_s)
        shares = [split.step_batches(sampler, stop=8, rank=r, world=2) for r in range(2) for split in kinds]
        halves = [source.batch(3)[0] for source in shares]
        assert torch.equal(halves[0], halves[1]) and torch.equal(halves[2], halves[3])
        assert torch.equal(torch.cat([halves[0], halves[2]]), memory.batch(sampler.indices(3, 0, 1))[0])
        for source in shares:
            source.close()
    finally:
        for source in sources:
            source.close()


def test_sequential_batches_rows_and_fingerprints(kinds):
    memory, streamed = kinds
    batches = [list(split.sequential_batches(5)) for split in kinds]
    assert [len(b) for b in batches[0]] == [5, 5, 5, 3]
    assert all(torch.equal(a, b) for a, b in zip(*batches))
    assert torch.equal(torch.cat(batches[0]), memory.batch(range(18))[0])
    parts = [split.rows(4, 11) for split in kinds]
    assert all(isinstance(part, Split) and len(part) == 7 for part in parts)
    assert torch.equal(parts[0].batch(range(7))[0], parts[1].batch(range(7))[0])
    assert torch.equal(parts[1].labels, memory.labels[4:11])
    for split in kinds:
        key = split.fingerprint(dataset_id="train")
        assert key == split.fingerprint(dataset_id="train", labels=split.labels) and len(key) == 64
        assert key != split.fingerprint(dataset_id="val")
        assert key != split.fingerprint(dataset_id="train", labels=split.labels.flip(0))


def test_grey_becomes_colour_and_float_data_are_not_images():
    grey = make_dataset(torch.arange(2 * 16, dtype=torch.uint8).view(2, 1, 4, 4), torch.tensor([0, 1]), ["a", "b"])
    colour = grey.grey_to_rgb()
    assert colour.shape == (3, 4, 4) and colour.mean == grey.mean * 3 and colour.std == grey.std * 3
    assert torch.equal(colour.batch([1])[0][0, 2], grey.batch([1])[0][0, 0])
    sequences = torch.randn(3, 2, 5, 1)
    dense = make_dataset(sequences, torch.zeros(3), ["x"])
    assert isinstance(dense, Split) and not dense.is_image and not dense.has_padding
    sequences[0, :, 3:] = float("nan")  # a shorter sequence, padded
    assert make_dataset(sequences, torch.zeros(3), ["x"]).has_padding
