"""Tests for selfsup.data: registry, built-in datasets, ImageFolder decoding and caching."""

from __future__ import annotations

import collections
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import selfsup.data.imagefolder as imagefolder
from selfsup.core.errors import DataError
from selfsup.data import DATASETS, ImageDataset, channel_stats, load_dataset

CIFAR_ZIP = Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.zip"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add overhead on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


# --------------------------------------------------------------------------------------------
# registry and built-in datasets


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


# --------------------------------------------------------------------------------------------
# imagefolder


def _pattern(seed: int, size: tuple[int, int] = (12, 10)) -> np.ndarray:
    """A smooth random RGB uint8 image [H, W, 3] (size is (W, H) as PIL counts), so that
    JPEG keeps it close."""
    grid = np.random.default_rng(seed).integers(0, 256, (3, 3, 3), dtype=np.uint8)
    return np.array(Image.fromarray(grid).resize(size, Image.Resampling.BILINEAR))


def _make_folder(root: Path) -> dict[str, np.ndarray]:
    """root/<class>/ with RGB, L, RGBA and P images as PNG and JPEG; returns the expected RGB
    arrays of the lossless files, keyed by path relative to root."""
    expected = {}
    for c, cls in enumerate(["zebra", "ant", "moth"]):  # created unsorted on purpose
        (root / cls).mkdir(parents=True)
        rgb = Image.fromarray(_pattern(c))
        rgb.save(root / cls / "a_rgb.png")
        expected[f"{cls}/a_rgb.png"] = np.array(rgb)
        grey = rgb.convert("L")
        grey.save(root / cls / "b_grey.png")
        expected[f"{cls}/b_grey.png"] = np.asarray(grey.convert("RGB"))
        rgba = rgb.convert("RGBA")
        rgba.putalpha(128)
        rgba.save(root / cls / "c_rgba.png")
        expected[f"{cls}/c_rgba.png"] = np.asarray(rgb)
        pal = rgb.convert("P")
        pal.save(root / cls / "d_pal.png", transparency=0)
        expected[f"{cls}/d_pal.png"] = np.asarray(pal.convert("RGBA").convert("RGB"))
        grey.save(root / cls / "e_grey.jpg", quality=90)
        rgb.save(root / cls / "f_rgb.JPEG", quality=90)
        (root / cls / "notes.txt").write_text("not an image, ignored by extension")
    return expected


def test_imagefolder_modes_and_order(tmp_path: Path) -> None:
    expected = _make_folder(tmp_path / "train")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no PIL warnings, no skipped files
        ds = load_dataset("imagefolder", "train", train_path=str(tmp_path / "train"), cache_dir=str(tmp_path))
    assert ds.classes == ["ant", "moth", "zebra"]
    _check_dataset_rect(ds, 18, (10, 12))
    assert ds.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    # per class, files in name order: a_rgb, b_grey, c_rgba, d_pal, e_grey.jpg, f_rgb.JPEG
    for c, cls in enumerate(ds.classes):
        for j, name in enumerate(["a_rgb.png", "b_grey.png", "c_rgba.png", "d_pal.png"]):
            got = ds.images[6 * c + j].permute(1, 2, 0).numpy()
            assert np.array_equal(got, expected[f"{cls}/{name}"]), (cls, name)
        grey_jpeg = ds.images[6 * c + 4]
        assert torch.equal(grey_jpeg[0], grey_jpeg[1]) and torch.equal(grey_jpeg[1], grey_jpeg[2])
        jpeg = ds.images[6 * c + 5].permute(1, 2, 0).float()
        assert (jpeg - torch.tensor(expected[f"{cls}/a_rgb.png"]).float()).abs().mean() < 10


def _check_dataset_rect(ds: ImageDataset, n: int, hw: tuple[int, int]) -> None:
    assert ds.images.dtype == torch.uint8 and ds.images.is_contiguous()
    assert tuple(ds.images.shape) == (n, 3, *hw)
    assert ds.labels.dtype == torch.int64
    assert np.allclose(ds.mean, channel_stats(ds.images)[0])


def test_imagefolder_sizes(tmp_path: Path) -> None:
    root = tmp_path / "data" / "train"
    for cls, size in [("a", (20, 10)), ("b", (7, 9))]:
        (root / cls).mkdir(parents=True)
        Image.fromarray(_pattern(1, size)).save(root / cls / "x.png")
    with pytest.raises(DataError, match=r"differ in size.*data\.image_size"):
        load_dataset("imagefolder", "train", train_path=str(root), cache_dir=str(tmp_path))
    # shorter side to 6, centre crop; found through data.root=<folder holding train/>
    data_root = str(tmp_path / "data")
    ds = load_dataset("imagefolder", "train", root=data_root, image_size=6, cache_dir=str(tmp_path))
    _check_dataset_rect(ds, 2, (6, 6))
    # a flat colour stays that colour through resize and crop
    (root / "b" / "y.png").unlink(missing_ok=True)
    Image.new("RGB", (30, 11), (10, 200, 30)).save(root / "b" / "y.png")
    ds = load_dataset("imagefolder", "train", train_path=str(root), image_size=5, cache_dir=str(tmp_path))
    assert ds.images[2].flatten(1).tolist() == [[10] * 25, [200] * 25, [30] * 25]


def test_imagefolder_cache_hit_and_invalidation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _make_folder(tmp_path / "train")
    kwargs = dict(train_path=str(tmp_path / "train"), cache_dir=str(tmp_path / "c"))
    first = load_dataset("imagefolder", "train", **kwargs)
    cache_files = sorted(p.suffix for p in (tmp_path / "c" / "imagefolder").iterdir())
    assert cache_files == [".json", ".npy"]

    real_open = Image.open
    opened: list[str] = []

    def no_decode(*args, **kw):
        raise AssertionError("cache miss: PIL.Image.open called")

    monkeypatch.setattr(imagefolder.Image, "open", no_decode)
    second = load_dataset("imagefolder", "train", **kwargs)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert (first.mean, first.std, first.classes) == (second.mean, second.std, second.classes)

    # change one file's contents and mtime: re-decoded, new pixels, old cache removed
    def counting_open(fp, *args, **kw):
        opened.append(str(fp))
        return real_open(fp, *args, **kw)

    monkeypatch.setattr(imagefolder.Image, "open", counting_open)
    target = tmp_path / "train" / "ant" / "a_rgb.png"
    Image.new("RGB", (12, 10), (1, 2, 3)).save(target)
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    third = load_dataset("imagefolder", "train", **kwargs)
    assert len(opened) >= 18
    assert third.images[0].flatten(1)[:, 0].tolist() == [1, 2, 3]
    assert torch.equal(third.images[1:], first.images[1:])
    assert len(list((tmp_path / "c" / "imagefolder").glob("*.npy"))) == 1


def test_imagefolder_corrupt_files_skipped(tmp_path: Path) -> None:
    _make_folder(tmp_path / "train")
    (tmp_path / "train" / "moth" / "bad.jpg").write_bytes(b"definitely not a jpeg")
    png = (tmp_path / "train" / "ant" / "a_rgb.png").read_bytes()
    (tmp_path / "train" / "ant" / "truncated.png").write_bytes(png[: len(png) // 2])
    kwargs = dict(train_path=str(tmp_path / "train"), cache_dir=str(tmp_path / "c"))
    for _ in range(2):  # decoded, then from the cache: the warning repeats
        match = r"skipped 2 unreadable image\(s\): .*truncated\.png.*bad\.jpg"
        with pytest.warns(UserWarning, match=match) as rec:
            ds = load_dataset("imagefolder", "train", **kwargs)
        assert len([w for w in rec if "unreadable" in str(w.message)]) == 1
        assert len(ds) == 18 and torch.bincount(ds.labels).tolist() == [6, 6, 6]


def test_imagefolder_errors(tmp_path: Path) -> None:
    c = str(tmp_path / "c")
    with pytest.raises(DataError, match=r"data\.train=.*nowhere.*does not exist"):
        load_dataset("imagefolder", "train", train_path=str(tmp_path / "nowhere"), cache_dir=c)
    with pytest.raises(DataError, match=r"data\.val is not set"):
        load_dataset("imagefolder", "val", train_path=str(tmp_path), cache_dir=c)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset("imagefolder", "val", val_path=str(tmp_path / "empty"), cache_dir=c)
    (tmp_path / "empty" / "cls").mkdir()
    (tmp_path / "empty" / "cls" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"empty holds no images: its class folder\(s\) 'cls' hold no"):
        load_dataset("imagefolder", "val", val_path=str(tmp_path / "empty"), cache_dir=c)
    (tmp_path / "empty" / "cls" / "x.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="none of its 1 image files could be read"):
        load_dataset("imagefolder", "val", val_path=str(tmp_path / "empty"), cache_dir=c)
    with pytest.raises(DataError, match="only to data.name=imagefolder"):
        load_dataset("digits", "train", train_path=str(tmp_path))


@pytest.mark.skipif(not CIFAR_ZIP.is_file(), reason=f"CIFAR-10 JPEG zip not found at {CIFAR_ZIP}")
def test_real_cifar10_slice(tmp_path: Path) -> None:
    per_class = 20
    with zipfile.ZipFile(CIFAR_ZIP) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".jpg"))
        taken: collections.Counter = collections.Counter()
        chosen = []
        for n in names:
            split, cls = n.split("/")[:2]
            if taken[split, cls] < per_class:
                taken[split, cls] += 1
                chosen.append(n)
        zf.extractall(tmp_path, members=chosen)
    cache = str(tmp_path / "cache")
    train = load_dataset("imagefolder", "train", root=str(tmp_path), cache_dir=cache)  # root/train
    val = load_dataset("imagefolder", "val", val_path=str(tmp_path / "test"), cache_dir=cache)
    classes = "airplane automobile bird cat deer dog frog horse ship truck".split()
    for ds in (train, val):
        assert ds.classes == classes
        _check_dataset_rect(ds, 10 * per_class, (32, 32))
        assert torch.bincount(ds.labels).tolist() == [per_class] * 10
    # labels follow folder names: sample i of class c is that folder's i-th file, decoded
    for c, cls in enumerate(classes):
        first = sorted((tmp_path / "train" / cls).iterdir())[0]
        idx = int(torch.nonzero(train.labels == c)[0])
        want = np.asarray(Image.open(first).convert("RGB")).transpose(2, 0, 1)
        assert np.array_equal(train.images[idx].numpy(), want), cls
    assert 0.3 < train.mean[0] < 0.7 and 0.1 < train.std[0] < 0.4
