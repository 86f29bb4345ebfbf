"""ImageFolder data (``root/<class>/**/<image>``), decoded once and cached as uint8.

Layout and class order follow ``torchvision.datasets.ImageFolder``: every non-hidden
sub-folder of ``root`` is a class, classes are sorted by name, and images are found
recursively. A folder with no sub-folder holds unlabelled images (``root/<image>``): every
label is ``-1`` and ``classes`` is empty, enough to pretrain on (evaluation needs labels). Decoding uses PIL in a thread pool (PIL releases the GIL while it decodes);
the decoded split is saved under ``<cache_dir>/imagefolder`` as a ``.npy`` (the uint8 array)
plus a ``.json`` (labels, stats, skipped files), both named by a hash of the folder's absolute
path, its file list, sizes and mtimes, and the image size. A second load is one ``stat`` per
file and one array read (CIFAR-10 train: about 0.5 s); any change to the files re-decodes.

Bad data: greyscale, palette, RGBA/LA, CMYK, bilevel, 16-bit and float images are converted to
8-bit RGB (16-bit values scaled, not clipped). Files that cannot be decoded (zero bytes,
truncated, corrupt, not images despite their extension) and empty class folders are reported
in ONE warning that counts and names them (the files are skipped; an empty class keeps its
label index, so train and val labels still agree), or raise :class:`DataError` with
``on_bad_file="error"`` (``data.on_bad_file``). A split with no readable image is an error.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import IO, Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from selfsup.core.errors import DataError
from selfsup.core.files import atomic_write
from selfsup.core.progress import progress_bar
from selfsup.core.threads import available_cores
from selfsup.data.decode import JPEG_DECODER, decode_canvas, to_rgb
from selfsup.data.datasets import (
    ImageDataset,
    channel_stats,
    make_dataset,
    register_dataset,
)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CACHE_VERSION = 4  # 3: skipped files carry their reason; 4: canvases by selfsup.data.decode
UNLABELLED = -1  # the label of every image of a folder without class sub-folders
_OK, _UNREADABLE, _WRONG_SIZE = 0, 1, 2


def load_imagefolder(
    path: str | os.PathLike[str],
    *,
    image_size: int | None = None,
    cache_dir: str | os.PathLike[str],
    setting: str = "data.train",
    on_bad_file: str = "skip",
) -> ImageDataset:
    """Load an ImageFolder split as RGB uint8 ``[N, 3, H, W]``, using the on-disk cache.

    Args:
        path: the split's root folder (holding one sub-folder per class; or, unlabelled, image files
            and no sub-folder: then every label is :data:`UNLABELLED` and ``classes`` is empty).
        image_size: resize the shorter side to this and centre-crop to a square; if ``None``
            all images must already share one size.
        cache_dir: the cache lives in ``<cache_dir>/imagefolder``.
        setting: the config key that named ``path``, for error messages.
        on_bad_file: ``"skip"`` unreadable files and empty class folders with one warning, or
            ``"error"``: raise naming them.
    Returns:
        :class:`ImageDataset` with ``images`` uint8 ``[N, 3, H, W]``, ``labels`` int64 ``[N]``.
    Raises:
        DataError: missing folder, no images, mixed sizes without
            ``image_size``, no readable image at all, or (``on_bad_file="error"``) any
            unreadable file or empty class folder.
    """
    root = Path(path).expanduser().resolve()
    classes, files, labels, stats, empty = scan_folder(root, setting)
    key = cache_key(root, files, stats, image_size)
    prefix = f"{root.name}-{hashlib.sha256(str(root).encode()).hexdigest()[:8]}-s{image_size or 'orig'}"
    cache_base = Path(cache_dir).expanduser() / "imagefolder" / f"{prefix}-{key[:24]}"
    cached = _read_cache(cache_base)
    if cached is None:
        images, kept, skipped = decode_images(root, files, labels, image_size, setting)
        meta = {"labels": kept.tolist(), "skipped": skipped, "stats": channel_stats(torch.from_numpy(images))}
        _write_cache(cache_base, prefix, images, meta)
    else:
        images, meta = cached
    report_bad_files(f"{setting}={root}", meta["skipped"], empty, on_bad_file)
    labels_t = torch.tensor(meta["labels"], dtype=torch.int64)
    return make_dataset(torch.from_numpy(images), labels_t, classes, tuple(meta["stats"]))


def split_path(split: str, root: str | None, train_path: str | None, val_path: str | None) -> tuple[str, str]:
    """``(path, config key)`` of an ImageFolder split: ``data.train`` / ``data.val``, else
    ``root/train`` (``root/val`` or ``root/test``) when ``data.root`` is set."""
    key = "data.train" if split == "train" else "data.val"
    path = train_path if split == "train" else val_path
    if path is None and root is not None:
        candidates = ["train"] if split == "train" else ["val", "test"]
        found = [Path(root) / c for c in candidates if (Path(root) / c).is_dir()]
        path = str(found[0]) if found else None
    if path is None:
        raise DataError(
            f"{key} is not set: data.name=imagefolder needs data.train=PATH and data.val=PATH "
            "(folders of class sub-folders)"
        )
    return path, key


def report_bad_files(where: str, skipped: list[list[str]], empty: list[str], on_bad_file: str) -> None:
    """One warning (or, with ``on_bad_file="error"``, one DataError) counting and naming the
    unreadable files (``[path, reason]`` pairs) and the empty class folders."""
    if not skipped and not empty:
        return
    parts = []
    if skipped:
        parts.append(f"{len(skipped)} unreadable image(s): " + _first([f"{f} ({why})" for f, why in skipped]))
    if empty:
        parts.append(f"{len(empty)} empty class folder(s), kept as classes without images: " + _first(empty))
    if on_bad_file == "error":
        raise DataError(f"{where}: {'; '.join(parts)} (data.on_bad_file=skip skips them with a warning)")
    warnings.warn(f"{where}: skipped {'; '.join(parts)}", stacklevel=3)


def _first(names: list[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def scan_folder(
    root: Path, setting: str
) -> tuple[list[str], list[str], np.ndarray, list[tuple[int, int]], list[str]]:
    """List a split's images.

    Returns:
        ``(classes, files, labels, stats, empty)``: sorted class names; image paths relative to
        ``root`` (sorted per class); int64 ``[N]`` labels; ``(size, mtime_ns)`` per file; the
        class folders holding no image file.
    Raises:
        DataError: ``root`` is missing, not a folder, or holds no image at all.

    A folder without class sub-folders is a split of unlabelled images (its own image files, every
    label :data:`UNLABELLED`, no classes): enough to pretrain on, not to evaluate.
    """
    if not root.exists():
        raise DataError(f"{setting}={root} does not exist: point it at a folder of class sub-folders")
    if not root.is_dir():
        raise DataError(f"{setting}={root} is not a folder: expected {root}/<class>/<image files>")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    files: list[str] = []
    labels: list[int] = []
    stats: list[tuple[int, int]] = []
    empty: list[str] = []
    if not classes:  # a flat folder: unlabelled images, for pretraining
        _walk(root, "", files, stats)
        labels = [UNLABELLED] * len(files)
    for index, name in enumerate(classes):
        before = len(files)
        _walk(root / name, name + os.sep, files, stats)
        if len(files) == before:
            empty.append(name)
        labels.extend([index] * (len(files) - before))
    if not files:
        exts = ", ".join(IMG_EXTENSIONS)
        if not classes:
            raise DataError(f"{setting}={root} holds no images: it has no class sub-folders and no {exts} files")
        shown = _first([repr(name) for name in classes])
        raise DataError(f"{setting}={root} holds no images: its class folder(s) {shown} hold no {exts} files")
    return classes, files, np.asarray(labels, dtype=np.int64), stats, empty


def _walk(folder: Path, rel: str, files: list[str], stats: list[tuple[int, int]]) -> None:
    """Append image paths under ``folder`` (relative, prefixed by ``rel``) and their
    ``(size, mtime_ns)``, recursing into sub-folders in name order and following links."""
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            _walk(Path(entry.path), rel + entry.name + os.sep, files, stats)
        elif entry.name.lower().endswith(IMG_EXTENSIONS):
            st = entry.stat()
            files.append(rel + entry.name)
            stats.append((st.st_size, st.st_mtime_ns))


def cache_key(root: Path, files: list[str], stats: list[tuple[int, int]], image_size: int | None) -> str:
    """Hex SHA-256 of (version, absolute root, image size, each file's path, size, mtime)."""
    decoder = JPEG_DECODER if image_size is not None else "pil"  # canvases depend on the JPEG decoder
    h = hashlib.sha256(f"v{CACHE_VERSION}\n{root}\n{image_size}\n{decoder}\n".encode())
    h.update("\n".join(f"{f}\t{s}\t{m}" for f, (s, m) in zip(files, stats)).encode())
    return h.hexdigest()


def decode_image(path: str, image_size: int | None) -> np.ndarray:
    """Decode one file to RGB uint8 ``[H, W, 3]`` (``[S, S, 3]`` when ``image_size=S``).

    Every mode becomes 8-bit RGB (:func:`to_rgb`). With ``image_size``, the file's bytes go through
    :func:`~selfsup.data.decode.decode_canvas`: JPEGs decode at reduced scale when possible (DCT
    scaling), then the centre square is resized (bilinear, antialiased). Raises ``OSError`` /
    ``ValueError`` for files that cannot be decoded.
    """
    if os.path.getsize(path) == 0:
        raise OSError("empty file")
    if image_size is not None:
        with open(path, "rb") as f:
            return decode_canvas(f.read(), image_size).permute(1, 2, 0).numpy()
    with Image.open(path) as img:
        return np.asarray(to_rgb(img))


def _reason(err: Exception) -> str:
    """A few words on why a file could not be decoded."""
    if isinstance(err, Image.DecompressionBombError):
        return "too many pixels"
    if isinstance(err, UnidentifiedImageError):
        return "not an image"
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return "truncated" if "truncated" in text.lower() else text[:80]


def _target_size(root: Path, files: list[str], image_size: int | None) -> tuple[int, int]:
    """``(H, W)`` every decoded image must have: ``image_size`` or the first readable file's."""
    if image_size is not None:
        return image_size, image_size
    for f in files:
        try:
            with Image.open(root / f) as img:
                return img.size[1], img.size[0]
        except Exception:  # unreadable: decode_images reports it
            continue
    return 1, 1


def decode_images(
    root: Path, files: list[str], labels: np.ndarray, image_size: int | None, setting: str
) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """Decode ``files`` in a thread pool into uint8 ``[N', 3, H, W]``.

    Returns:
        ``(images, labels, skipped)``: the readable images and their labels (``N'`` of them,
        in file order) and ``[relative path, reason]`` of every unreadable file.
    """
    height, width = _target_size(root, files, image_size)
    n = len(files)
    out = np.empty((n, 3, height, width), dtype=np.uint8)
    status = np.zeros(n, dtype=np.int8)
    sizes: dict[int, tuple[int, int]] = {}
    reasons: dict[int, str] = {}

    stop = threading.Event()

    def work(first: int, end: int) -> int:
        for i in range(first, end):
            if stop.is_set():
                break
            try:
                arr = decode_image(str(root / files[i]), image_size)
            except Exception as err:  # empty, corrupt, truncated or not an image: skipped and reported
                status[i], reasons[i] = _UNREADABLE, _reason(err)
                continue
            if arr.shape[:2] != (height, width):
                status[i] = _WRONG_SIZE
                sizes[i] = arr.shape[1], arr.shape[0]
                continue
            out[i] = arr.transpose(2, 0, 1)
        return end - first

    workers = available_cores()
    chunk = max(16, min(512, n // (8 * workers) + 1))
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        with progress_bar(total=n, desc=f"decoding {root.name}", unit="img", leave=False, delay=2.0) as bar:
            futures = [pool.submit(work, s, min(s + chunk, n)) for s in range(0, n, chunk)]
            for fut in as_completed(futures):
                bar.update(fut.result())
    finally:  # Ctrl-C (or an error): stop within an image, not after the whole folder; nothing is cached
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)

    if sizes:
        i = min(sizes)
        raise DataError(
            f"{setting}={root}: images differ in size ({files[i]} is {sizes[i][0]}x{sizes[i][1]}, "
            f"expected {width}x{height}): set data.image_size=N to resize them"
        )
    ok = status == _OK
    if not ok.any():
        why = _first([f"{files[i]} ({reasons[i]})" for i in sorted(reasons)], 3)
        raise DataError(f"{setting}={root}: none of its {n} image files could be read: {why}")
    skipped = [[files[i], reasons[i]] for i in np.flatnonzero(~ok)]
    if skipped:
        return np.ascontiguousarray(out[ok]), labels[ok], skipped
    return out, labels, skipped


def _read_cache(base: Path) -> tuple[np.ndarray, dict] | None:
    """``(images, meta)`` from ``base.npy`` and ``base.json``, or ``None`` if absent or damaged."""
    npy, meta_file = base.with_name(base.name + ".npy"), base.with_name(base.name + ".json")
    if not (npy.is_file() and meta_file.is_file()):
        return None
    try:
        meta = json.loads(meta_file.read_text())
        images = np.load(npy, allow_pickle=False)
        if images.dtype != np.uint8 or images.ndim != 4 or len(meta["labels"]) != images.shape[0]:
            raise ValueError("inconsistent cache files")
        return images, meta
    except (OSError, ValueError, KeyError) as e:  # damaged cache: decode again and overwrite it
        warnings.warn(f"ignoring unreadable image cache {npy} ({e}); decoding again", stacklevel=3)
        return None


def _atomic_write(file: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``file`` via a temporary file in the same folder and ``os.replace`` (umask permissions)."""
    def to_path(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write(f)

    atomic_write(file, to_path)


def _write_cache(base: Path, prefix: str, images: np.ndarray, meta: dict) -> None:
    """Write ``base.json`` then ``base.npy`` (the commit point), each atomically; then delete
    older caches of the same folder and image size. A failure only warns."""
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(base.with_name(base.name + ".json"), lambda f: f.write(json.dumps(meta).encode()))
        _atomic_write(base.with_name(base.name + ".npy"), lambda f: np.save(f, images, allow_pickle=False))
        for old in base.parent.glob(f"{glob.escape(prefix)}-*"):  # same folder and size, old contents
            if old.name not in (base.name + ".npy", base.name + ".json"):
                old.unlink(missing_ok=True)
    except OSError as e:
        warnings.warn(
            f"could not write image cache {base}.npy ({e}); set SELFSUP_CACHE to a writable folder",
            stacklevel=3,
        )


@register_dataset("imagefolder")
def load_imagefolder_dataset(
    split: str,
    *,
    root: str | None = None,
    train_path: str | None = None,
    val_path: str | None = None,
    image_size: int | None = None,
    cache_dir: Path,
    on_bad_file: str = "skip",
    **_: object,
) -> ImageDataset:
    """``data.name=imagefolder``: a folder of class sub-folders (``data.train`` / ``data.val``), decoded once and cached."""
    path, key = split_path(split, root, train_path, val_path)
    return load_imagefolder(path, image_size=image_size, cache_dir=cache_dir, setting=key, on_bad_file=on_bad_file)
