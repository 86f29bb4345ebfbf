"""Bad data in an imagefolder: convert what can be converted, skip (one warning) or fail on the rest."""
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.core.errors import DataError
from selfsup.data import load_dataset

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
    with pytest.raises(DataError, match="no class sub-folders"):
        load(root / "x", tmp_path)
    with pytest.raises(DataError, match=r"data\.val is not set"):
        load_dataset("imagefolder", "val", train_path=str(root), cache_dir=str(tmp_path / "cache"))
