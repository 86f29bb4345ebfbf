"""ImageFolder data (selfsup.data.imagefolder): every image mode decoded to RGB in a fixed order, sizes, the
decoded cache, a real CIFAR-10 slice; bad data: convert what can be converted, skip (one warning) or
fail on the rest."""
import collections
import os
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import selfsup.data.imagefolder as imagefolder
from selfsup.core.errors import DataError
from selfsup.data import ImageDataset, channel_stats, load_dataset
from support import CIFAR_ZIP

pytestmark = pytest.mark.usefixtures("one_thread")

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (10, 12, 3), dtype=np.uint8)  # [H, W, 3]
GREY16 = (np.arange(120, dtype=np.uint32).reshape(10, 12) * 547).astype(np.uint16)  # up to 65093
RGB16 = RNG.integers(0, 65536, (10, 12, 3), dtype=np.uint16)


def png16_rgb(path: Path, pixels: np.ndarray) -> None:
    """A 48-bit RGB PNG (PIL cannot write one): signature, IHDR, IDAT, IEND."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """root/a: every convertible mode; root/b: one good image and every kind of unreadable file;
    root/c: an empty class folder."""
    root = tmp_path / "train"
    a, b = root / "a", root / "b"
    a.mkdir(parents=True), b.mkdir(), (root / "c").mkdir()
    image = Image.fromarray(RGB)
    image.save(a / "01_rgb.png")
    image.convert("L").save(a / "02_grey.png")
    image.convert("RGBA").save(a / "03_rgba.png")
    image.convert("CMYK").save(a / "04_cmyk.jpg", quality=95)
    image.convert("P").save(a / "05_palette.png")
    Image.fromarray(GREY16).save(a / "06_grey16.png")
    png16_rgb(a / "07_rgb16.png", RGB16)
    image.convert("1").save(a / "08_bilevel.png")
    image.convert("LA").save(a / "09_grey_alpha.png")
    image.save(b / "good.png")
    image.save(b / "full.jpg", quality=90)
    jpeg = (b / "full.jpg").read_bytes()
    (b / "full.jpg").unlink()
    (b / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (b / "zero.png").write_bytes(b"")
    (b / "text.jpg").write_text("this is a text file with an image extension\n")
    (b / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(RNG.integers(0, 256, 200, dtype=np.uint8)))
    (root / "c" / "notes.txt").write_text("no images here")
    return root


def load(root: Path, tmp_path: Path, **kwargs):
    return load_dataset("imagefolder", "train", train_path=str(root), cache_dir=str(tmp_path / "cache"), **kwargs)


def test_modes_are_converted_to_rgb(messy: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning):
        ds = load(messy, tmp_path)
    assert ds.classes == ["a", "b", "c"] and ds.labels.tolist() == [0] * 9 + [1]  # 'c' keeps its index
    img = {name: ds.images[i].permute(1, 2, 0).numpy().astype(int) for i, name in enumerate(sorted(
        p.name for p in (messy / "a").iterdir()))}
    pil = Image.fromarray(RGB)
    assert np.array_equal(img["01_rgb.png"], RGB)
    assert np.array_equal(img["02_grey.png"], np.asarray(pil.convert("L").convert("RGB")))
    assert np.array_equal(img["03_rgba.png"], RGB)  # alpha dropped
    assert np.array_equal(img["05_palette.png"], np.asarray(pil.convert("P").convert("RGB")))
    cmyk = np.asarray(Image.open(messy / "a" / "04_cmyk.jpg").convert("RGB")).astype(int)
    assert np.array_equal(img["04_cmyk.jpg"], cmyk) and np.abs(cmyk - RGB).mean() < 12
    # 16 bit: scaled to 8 bit (PIL's own convert would clip everything above 255 to white)
    assert np.abs(img["06_grey16.png"] - np.rint(GREY16 / 257)[..., None]).max() <= 1
    assert img["06_grey16.png"].min() == 0 and 240 < img["06_grey16.png"].max() <= 255
    assert np.abs(img["07_rgb16.png"] - RGB16 / 257).max() <= 1
    assert set(np.unique(img["08_bilevel.png"])) <= {0, 255}
    assert np.array_equal(img["09_grey_alpha.png"], np.asarray(pil.convert("L").convert("RGB")))


def test_unreadable_files_skipped_with_one_warning_naming_them(messy: Path, tmp_path: Path) -> None:
    for attempt in ("decoded", "cached"):  # the cache remembers what was skipped, and says it again
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = load(messy, tmp_path)
        ours = [str(w.message) for w in caught if str(messy) in str(w.message)]
        assert len(ours) == 1, (attempt, ours)
        message = ours[0]
        assert message.startswith(f"data.train={messy}: skipped 4 unreadable image(s): ")
        for name, why in [("garbage.png", "not an image"), ("text.jpg", "not an image"),
                          ("truncated.jpg", "truncated"), ("zero.png", "empty file")]:
            assert f"b/{name} ({why})" in message, (name, message)
        assert "1 empty class folder(s), kept as classes without images: c" in message
        assert len(ds) == 10 and torch.bincount(ds.labels, minlength=3).tolist() == [9, 1, 0]


def test_on_bad_file_error_fails_naming_the_files(messy: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.train=.*: 4 unreadable image\(s\): b/garbage\.png \(not an image\), "
                                        r".*empty class folder.*data\.on_bad_file=skip") as info:
        load(messy, tmp_path, on_bad_file="error")
    assert "\n" not in str(info.value)
    for name in ("b/garbage.png", "b/text.jpg", "b/truncated.jpg", "b/zero.png", "c/notes.txt"):
        (messy / name).unlink()
    (messy / "c").rmdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing bad left: no warning, no error
        ds = load(messy, tmp_path, on_bad_file="error")
    assert len(ds) == 10 and ds.classes == ["a", "b"]


def test_empty_or_missing_split_is_a_one_line_error(tmp_path: Path) -> None:
    root = tmp_path / "split"
    (root / "x").mkdir(parents=True)
    (root / "y").mkdir()
    (root / "y" / "readme.md").write_text("#")
    with pytest.raises(DataError, match=r"data\.train=.*split holds no images: its class folder\(s\) 'x', 'y' hold no"):
        load(root, tmp_path)
    (root / "x" / "bad.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"none of its 1 image files could be read: x/bad\.png \(empty file\)"):
        load(root, tmp_path)
    with pytest.raises(DataError, match=r"data\.train=.*nowhere does not exist"):
        load(tmp_path / "nowhere", tmp_path)
    (tmp_path / "flat").mkdir()  # no class folders: unlabelled images, but none here
    with pytest.raises(DataError, match=r"flat holds no images: it has no class sub-folders and no \.jpg"):
        load(tmp_path / "flat", tmp_path)
    with pytest.raises(DataError, match=r"data\.val is not set"):
        load_dataset("imagefolder", "val", train_path=str(root), cache_dir=str(tmp_path / "cache"))


# ----------------------------------------------------------------------------- folders of good images


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
