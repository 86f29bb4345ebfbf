"""Streaming ImageFolder data, for splits too large to hold in memory (ImageNet-style).

A split whose decoded uint8 tensor would exceed ``data.in_memory_max_gb`` (or any split with
``data.streaming=always``) is not decoded up front. Instead DataLoader worker processes read,
decode and resize each image to a fixed uint8 canvas and return uint8 batches; every random
augmentation still runs batched on the training device (:class:`~selfsup.data.augment.ViewMaker`),
exactly as for in-memory data.

* Same bytes as the in-memory path: a worker decodes with
  :func:`~selfsup.data.imagefolder.decode_image` (shorter side resized to the canvas side S,
  centre S x S crop), so a streamed batch is byte for byte the slice the in-memory path would
  take; the threshold changes memory use, never results (the one difference: ``mean`` / ``std``
  come from a sample, see below).
* Keyed by step: the loader's item ``s`` is the batch of dataset indices
  ``sampler.indices(s, rank, world)`` (``EpochSampler`` in :mod:`selfsup.engine.trainer` keeps that
  protocol), so the data order is a function of (seed, step) alone and a run resumed at step
  ``s`` streams exactly the batches of an uninterrupted one. Each process decodes only its share.
* ``mean`` / ``std`` are estimated from a seeded sample of the split (``stats_samples`` images,
  2048 by default; exact when the split is smaller), cached on disk with the file list's hash.
* Bad files (``data.on_bad_file``): empty files and empty class folders are seen when the folder
  is scanned and handled as the in-memory path does (skipped with one warning, so indices agree
  with the in-memory split, or a :class:`DataError`). Other unreadable files are only found when
  a worker decodes them: ``skip`` fills the slot with another image of the same batch and warns
  once per file; ``error`` raises a :class:`DataError` naming the file.

A :class:`StreamingImageFolder` is a :class:`~selfsup.data.split.Split`, as an in-memory
:class:`~selfsup.data.datasets.ImageDataset` is: the trainer takes its step-keyed batches from
:meth:`~StreamingImageFolder.step_batches` and feature extraction its file-order batches from
:meth:`~StreamingImageFolder.sequential_batches`, never asking which kind of split it has::

    split = open_split(cfg.data, "train", seed=cfg.trainer.seed)  # in memory or streamed
    source = split.step_batches(sampler, stop=total_steps, device=device)
    images, labels = source.batch(step)  # uint8 [B, 3, 224, 224] (streamed: on the CPU, pinned on a GPU run)
    source.close()  # stops the workers
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from selfsup.core.errors import DataError
from selfsup.core.files import atomic_write
from selfsup.data.datasets import ImageDataset, channel_stats, default_cache_dir
from selfsup.data.fingerprint import hash_tensor, sample_rows
from selfsup.data.imagefolder import (
    cache_key,
    decode_image,
    decode_images,
    load_imagefolder,
    report_bad_files,
    scan_folder,
    split_path,
)
from selfsup.data.on_demand import OnDemandSplit
from selfsup.data.step_loader import (
    BatchSampler,
    SequentialBatches,
    StepBatches,
    StepStream,
    default_workers,
    stream_batches,
    stream_images,
)

if TYPE_CHECKING:
    from selfsup.config import DataConfig

__all__ = [
    "BatchSampler", "SequentialBatches", "StepBatches", "StepStream", "StreamingImageFolder", "decoded_gb",
    "default_workers", "open_imagefolder", "open_streamed", "stream_batches", "stream_images",
]


def decoded_gb(num_images: int, height: int, width: int, channels: int = 3) -> float:
    """Size in GiB of ``num_images`` decoded uint8 images of ``channels x height x width``."""
    return num_images * channels * height * width / 2**30


@dataclass
class StreamingImageFolder(OnDemandSplit):
    """An ImageFolder split read on demand: file list, labels, canvas size and estimated stats.

    It is a :class:`~selfsup.data.split.Split` as an :class:`~selfsup.data.datasets.ImageDataset`
    is (``len``, ``labels``, ``classes``, ``mean``, ``std``, ``shape``, ``batch``, ``step_batches``,
    ``sequential_batches``, ...) but has no ``images`` tensor: workers decode on demand.

    Attributes:
        root: the split's folder; ``files`` are relative to it (torchvision's order).
        files: image paths, sorted by class, then by path.
        labels: int64 ``[N]`` class indices into ``classes``.
        classes: sorted class-folder names.
        image_size: the canvas side: every image is decoded to uint8 ``[3, S, S]``.
        mean, std: per-channel mean / std of ``images / 255``, estimated on a seeded sample.
        setting: the config key that named ``root``, for error messages.
        on_bad_file: ``"skip"``: an unreadable file's slot is filled with another image of the
            same batch (one warning per file); ``"error"``: raise :class:`DataError` naming it.
        stats_from: how many images ``mean`` / ``std`` were computed on.
        workers: DataLoader worker processes (``data.workers``); ``None``: :func:`default_workers`.
    """

    root: Path
    files: list[str]
    labels: torch.Tensor
    classes: list[str]
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    setting: str = "data.train"
    on_bad_file: str = "skip"
    stats_from: int = 0
    workers: int | None = None

    def __len__(self) -> int:
        return len(self.files)

    def decode_one(self, i: int) -> torch.Tensor:
        """File ``i`` decoded by :func:`~selfsup.data.imagefolder.decode_image` (shorter side to S, centre crop)."""
        arr = decode_image(str(self.root / self.files[i]), self.image_size)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def sample_name(self, i: int) -> str:
        return self.files[i]

    def source_line(self) -> str:
        return f"streaming {self.setting}={self.root}: {len(self)} images"

    def rows(self, start: int, stop: int) -> StreamingImageFolder:
        """Files ``start .. stop - 1``. (A file that cannot be read is replaced by another image of its
        batch, so batches cut at other places may fill it with another image.)"""
        return dataclasses.replace(self, files=self.files[start:stop], labels=self.labels[start:stop])

    def fingerprint(self, *, labels: torch.Tensor | None = None, dataset_id: str = "") -> str:
        """sha256 of ``dataset_id``, the folder, canvas size, every file name and label (``labels`` or
        this split's), and the size and modification time of up to 1024 evenly spaced files."""
        hasher = hashlib.sha256(f"{dataset_id}|{self.root}|{self.image_size}|".encode())
        hasher.update("\n".join(self.files).encode())
        hash_tensor(hasher, "labels", self.labels.long() if labels is None else torch.as_tensor(labels).long())
        for i in sample_rows(len(self)).tolist():
            stat = (Path(self.root) / self.files[i]).stat()
            hasher.update(f"{i}|{stat.st_size}|{stat.st_mtime_ns}|".encode())
        return hasher.hexdigest()

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, image_size: int | None, cache_dir: str | os.PathLike[str],
             setting: str = "data.train", on_bad_file: str = "skip", stats_samples: int = 2048,
             seed: int = 0, workers: int | None = None) -> StreamingImageFolder:
        """Scan ``path`` (a folder of class folders) and estimate its stats (cached on disk).

        ``image_size=None`` takes the first readable image's side as the canvas (that image must
        be square); images of another size are then resized to it like any other canvas.
        Empty files and class folders are reported as :func:`~selfsup.data.imagefolder.load_imagefolder`
        reports them (and empty files left out).
        """
        root = Path(path).expanduser().resolve()
        classes, files, labels, stats = _scan_readable(root, setting, on_bad_file)
        return cls._from_scan(root, classes, files, labels, stats, image_size=image_size, cache_dir=cache_dir,
                              setting=setting, on_bad_file=on_bad_file, stats_samples=stats_samples, seed=seed,
                              workers=workers)

    @classmethod
    def _from_scan(cls, root: Path, classes, files, labels, stats, *, image_size, cache_dir, setting, on_bad_file,
                   stats_samples, seed, workers=None) -> StreamingImageFolder:
        size = image_size if image_size is not None else _native_size(root, files, setting)
        key = cache_key(root, files, stats, image_size)
        digest = hashlib.sha256(f"{key}\n{stats_samples}\n{seed}".encode()).hexdigest()[:24]
        cache = Path(cache_dir).expanduser() / "imagefolder" / f"{root.name}-stream-s{size}-{digest}.json"
        mean, std = _cached_stats(cache)
        if mean is None:
            mean, std = _sample_stats(root, files, labels, size, setting, stats_samples, seed)
            _write_json(cache, {"mean": mean, "std": std, "samples": min(stats_samples, len(files))})
        return cls(root, files, torch.from_numpy(np.asarray(labels, dtype=np.int64)), classes, size, tuple(mean),
                   tuple(std), setting, on_bad_file, min(stats_samples, len(files)), workers)


def _scan_readable(root: Path, setting: str, on_bad_file: str):
    """:func:`scan_folder` less empty files, reported (with empty class folders) as the in-memory path does."""
    classes, files, labels, stats, empty = scan_folder(root, setting)
    zero = [i for i, (size, _) in enumerate(stats) if size == 0]
    report_bad_files(f"{setting}={root}", [[files[i], "empty file"] for i in zero], empty, on_bad_file)
    if zero:
        keep = np.setdiff1d(np.arange(len(files)), zero)
        if not len(keep):
            raise DataError(f"{setting}={root}: none of its {len(files)} image files could be read: all are empty")
        files, labels, stats = [files[i] for i in keep], labels[keep], [stats[i] for i in keep]
    return classes, files, labels, stats


def _native_size(root: Path, files: list[str], setting: str) -> int:
    """The side of the first readable image, which must be square."""
    for f in files:
        try:
            h, w = decode_image(str(root / f), None).shape[:2]
        except Exception:
            continue
        if h != w:
            raise DataError(f"{setting}={root}: {f} is {w}x{h}, not square: set data.image_size=N")
        return h
    raise DataError(f"{setting}={root}: none of its {len(files)} image files could be read")


def _sample_stats(root: Path, files: list[str], labels: np.ndarray, image_size: int, setting: str,
                  samples: int, seed: int) -> tuple[list[float], list[float]]:
    """Channel mean / std of a seeded random sample of the split (decoded in a thread pool)."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(files), size=min(samples, len(files)), replace=False))
    images, _, _ = decode_images(root, [files[i] for i in pick], np.asarray(labels)[pick], image_size, setting)
    mean, std = channel_stats(torch.from_numpy(images))
    return list(mean), list(std)


def _cached_stats(path: Path) -> tuple[list[float] | None, list[float] | None]:
    try:
        data = json.loads(path.read_text())
        return [float(v) for v in data["mean"]], [float(v) for v in data["std"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


def _write_json(path: Path, data: dict) -> None:
    """Atomically write ``data``; a failure only warns (the stats are then recomputed next time)."""
    try:
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data)))
    except OSError as e:
        warnings.warn(f"could not write {path} ({e})", stacklevel=3)


def open_imagefolder(path: str | os.PathLike[str], *, image_size: int | None, cache_dir: str | os.PathLike[str],
                     in_memory_max_gb: float, setting: str = "data.train", on_bad_file: str = "skip",
                     stats_samples: int = 2048, seed: int = 0) -> ImageDataset | StreamingImageFolder:
    """The split in memory (:func:`~selfsup.data.imagefolder.load_imagefolder`) when its decoded
    size is at most ``in_memory_max_gb`` GiB, else a :class:`StreamingImageFolder`."""
    root = Path(path).expanduser().resolve()
    classes, files, labels, stats, _empty = scan_folder(root, setting)
    side = image_size if image_size is not None else _native_size(root, files, setting)
    if decoded_gb(len(files), side, side) <= in_memory_max_gb:
        return load_imagefolder(root, image_size=image_size, cache_dir=cache_dir, setting=setting,
                                on_bad_file=on_bad_file)
    return StreamingImageFolder.open(root, image_size=image_size, cache_dir=cache_dir, setting=setting,
                                     on_bad_file=on_bad_file, stats_samples=stats_samples, seed=seed)


def open_streamed(data: DataConfig, split: str, *, seed: int = 0) -> StreamingImageFolder | None:
    """``split`` of ``data`` (the ``data`` config section) as a :class:`StreamingImageFolder`, or
    ``None`` when it is to be loaded in memory as usual.

    It streams when ``data.name=imagefolder`` and either ``data.streaming=always`` or
    (``auto``) its decoded size exceeds ``data.in_memory_max_gb``. ``data.num_samples`` picks
    the same random subset as the in-memory path (seeded by ``seed``, ``trainer.seed``).
    """
    if data.name != "imagefolder" or data.streaming == "never" or split not in ("train", "val"):
        return None
    path, setting = split_path(split, data.root, data.train, data.val)
    root = Path(path).expanduser().resolve()
    if data.streaming == "auto":
        _classes, files, _labels, _stats, _empty = scan_folder(root, setting)
        side = data.image_size if data.image_size is not None else _native_size(root, files, setting)
        if decoded_gb(len(files), side, side) <= data.in_memory_max_gb:
            return None
    classes, files, labels, stats = _scan_readable(root, setting, data.on_bad_file)
    if data.num_samples is not None and data.num_samples < len(files):  # as selfsup.data.datasets.subset picks
        pick = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:data.num_samples]
        pick = pick.sort().values.numpy()
        files, labels, stats = [files[i] for i in pick], labels[pick], [stats[i] for i in pick]
    cache = Path(data.cache_dir).expanduser() if data.cache_dir else default_cache_dir()
    return StreamingImageFolder._from_scan(root, classes, files, labels, stats, image_size=data.image_size,
                                           cache_dir=cache, setting=setting, on_bad_file=data.on_bad_file,
                                           stats_samples=2048, seed=0, workers=data.workers)
