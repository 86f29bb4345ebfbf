"""Tests for selfsup.data.datasets: the registry and the built-in datasets (digits, synthetic, CIFAR offline).
ImageFolder data: tests/data/test_imagefolder.py."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
import torch

from selfsup.core.errors import DataError
from selfsup.data import DATASETS, ImageDataset, load_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def _check_dataset(ds: ImageDataset, channels: int, size: int) -> None:
    """The ImageDataset contract: dtypes, shapes, contiguity, stats."""
    assert ds.images.dtype == torch.uint8 and ds.images.is_contiguous() and ds.images.device.type == "cpu"
    assert ds.images.shape[1:] == (channels, size, size)
    assert ds.labels.dtype == torch.int64 and ds.labels.shape == (len(ds),)
    assert int(ds.labels.min()) >= 0 and int(ds.labels.max()) < len(ds.classes)
    x = ds.images.double() / 255
    assert np.allclose(ds.mean, x.mean(dim=(0, 2, 3)).tolist(), atol=1e-9)
    assert np.allclose(ds.std, x.std(dim=(0, 2, 3), unbiased=False).tolist(), atol=1e-9)


def _rows(images: torch.Tensor) -> collections.Counter:
    return collections.Counter(bytes(r) for r in images.reshape(len(images), -1).numpy())


# ----------------------------------------------------------------------------- registry and built-in datasets


def test_registry_and_unknown_name() -> None:
    assert {"digits", "synthetic", "imagefolder", "cifar10", "cifar100", "stl10"} <= set(DATASETS)
    with pytest.raises(DataError, match=r"did you mean 'cifar10'.*known: .*digits"):
        load_dataset("cifar01", "train")
    with pytest.raises(DataError, match="split"):
        load_dataset("digits", "test")
    with pytest.raises(DataError, match="num_classes"):
        load_dataset("digits", "train", num_classes=3)


def test_digits_split() -> None:
    from sklearn.datasets import load_digits

    train, val = load_dataset("digits", "train"), load_dataset("digits", "val")
    _check_dataset(train, 1, 8)
    _check_dataset(val, 1, 8)
    assert len(train) + len(val) == 1797 and 0.18 < len(val) / 1797 < 0.22
    assert train.classes == [str(d) for d in range(10)]
    assert int(train.images.max()) == 255
    # stratified: every class has about 20% of its samples in val
    counts = torch.bincount(val.labels, minlength=10) / (
        torch.bincount(val.labels, minlength=10) + torch.bincount(train.labels, minlength=10)
    )
    assert ((counts - 0.2).abs() < 0.02).all()
    # a partition of the full data set: together exactly the 1797 images, nothing twice
    full = torch.from_numpy(np.rint(load_digits().images * 255 / 16).astype(np.uint8))
    assert _rows(train.images) + _rows(val.images) == _rows(full)
    # deterministic, and independent of the seed
    again = load_dataset("digits", "val", seed=123)
    assert torch.equal(again.images, val.images) and torch.equal(again.labels, val.labels)
    big = load_dataset("digits", "train", image_size=16)
    _check_dataset(big, 1, 16)
    sub = load_dataset("digits", "train", num_samples=100)
    assert len(sub) == 100
    assert torch.equal(sub.images, load_dataset("digits", "train", num_samples=100).images)


def test_synthetic_deterministic_and_separable() -> None:
    train = load_dataset("synthetic", "train", seed=3)
    val = load_dataset("synthetic", "val", seed=3)
    _check_dataset(train, 3, 32)
    assert (len(train), len(val), train.classes) == (512, 128, ["class0", "class1", "class2", "class3"])
    assert torch.equal(train.images, load_dataset("synthetic", "train", seed=3).images)
    assert not torch.equal(train.images, load_dataset("synthetic", "train", seed=4).images)
    assert not torch.equal(train.images[:128], val.images)
    # nearest class mean on raw pixels: the classes are visible (train and val share patterns)
    xt, xv = train.images.flatten(1).float(), val.images.flatten(1).float()
    means = torch.stack([xt[train.labels == c].mean(0) for c in range(4)])
    pred = torch.cdist(xv, means).argmin(1)
    assert (pred == val.labels).float().mean() > 0.9
    # ... but not trivially: samples of one class differ from each other
    assert (xt[train.labels == 0].std(0).mean()) > 5
    other = load_dataset("synthetic", "val", num_samples=30, num_classes=7, image_size=20)
    _check_dataset(other, 3, 20)
    assert len(other) == 30 and len(other.classes) == 7


def test_cifar10_offline_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.root=.*data\.name=imagefolder"):
        load_dataset("cifar10", "train", root=str(tmp_path))
