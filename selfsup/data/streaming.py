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

Typical use (the trainer and :func:`~selfsup.evaluation.features.extract_features` do this)::

    folder = open_imagefolder(path, image_size=224, cache_dir=cache, in_memory_max_gb=8)
    if is_streaming(folder):
        for step, images, labels in stream_batches(folder, sampler, range(start, end)):
            ...  # images: uint8 [B, 3, 224, 224] on the CPU (pinned with pin_memory=True)
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from selfsup.core.errors import DataError
from selfsup.data.datasets import ImageDataset, channel_stats, default_cache_dir
from selfsup.data.imagefolder import (
    cache_key,
    decode_image,
    decode_images,
    load_imagefolder,
    report_bad_files,
    scan_folder,
    split_path,
)

if TYPE_CHECKING:
    from selfsup.config import DataConfig

__all__ = [
    "BatchSampler", "SequentialBatches", "StepBatches", "StepStream", "StreamingImageFolder", "decoded_gb",
    "default_workers", "is_streaming", "open_imagefolder", "open_streamed", "stream_batches", "stream_images",
]


def decoded_gb(num_images: int, height: int, width: int, channels: int = 3) -> float:
    """Size in GiB of ``num_images`` decoded uint8 images of ``channels x height x width``."""
    return num_images * channels * height * width / 2**30


class BatchSampler(Protocol):
    """What :func:`stream_batches` needs from a sampler: this process's indices of a step."""

    def indices(self, step: int, rank: int, world: int) -> torch.Tensor: ...


class SequentialBatches:
    """Indices ``[s * B, (s + 1) * B)`` for step ``s`` (the last batch may be short): evaluation order.

    Each process takes its contiguous share of every batch.
    """

    def __init__(self, num_samples: int, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.num_steps = -(-num_samples // batch_size)

    def indices(self, step: int, rank: int, world: int) -> torch.Tensor:
        batch = torch.arange(step * self.batch_size, min((step + 1) * self.batch_size, self.num_samples))
        return batch.tensor_split(world)[rank]


@dataclass
class StreamingImageFolder:
    """An ImageFolder split read on demand: file list, labels, canvas size and estimated stats.

    It stands where an :class:`~selfsup.data.datasets.ImageDataset` stands (``len``, ``labels``,
    ``classes``, ``mean``, ``std``, ``shape``) but has no ``images`` tensor.

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

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one decoded image, as ``ImageDataset.shape``."""
        return 3, self.image_size, self.image_size

    def describe(self) -> str:
        """One line for the log: what streams, how, and where its normalisation comes from."""
        workers = self.workers if self.workers is not None else default_workers()
        fmt = lambda values: "(" + ", ".join(f"{v:.4f}" for v in values) + ")"  # noqa: E731
        return (f"streaming {self.setting}={self.root}: {len(self)} images decoded to uint8 "
                f"{'x'.join(map(str, self.shape))} by {workers} DataLoader worker(s) per process; "
                f"mean {fmt(self.mean)} std {fmt(self.std)} estimated on {self.stats_from} of them")

    def decode(self, indices: torch.Tensor | list[int] | range) -> tuple[torch.Tensor, torch.Tensor, list[list[str]]]:
        """Decode images ``indices``: ``(uint8 [n, 3, S, S], int64 [n] labels, [[file, reason], ...])``.

        An unreadable file's slot holds another readable image of the same call (its label too)
        and the file is listed in the third value; when none is readable every slot is zero.
        Raising is the caller's business (:func:`stream_batches`), so that a DataLoader worker
        never raises and the error reaches the user as one line.
        """
        idx = [int(i) for i in indices]
        out = torch.zeros((len(idx), *self.shape), dtype=torch.uint8)
        labels = self.labels[idx].clone() if idx else torch.empty(0, dtype=torch.int64)
        bad: list[list[str]] = []
        good: list[int] = []
        for slot, i in enumerate(idx):
            try:
                arr = decode_image(str(self.root / self.files[i]), self.image_size)
            except Exception as err:  # corrupt, truncated, not an image: reported by the caller
                bad.append([self.files[i], (str(err).strip().splitlines() or [type(err).__name__])[0][:80]])
                continue
            out[slot] = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
            good.append(slot)
        if bad and good:
            bad_slots = sorted(set(range(len(idx))) - set(good))
            for k, slot in enumerate(bad_slots):  # deterministic stand-ins from the same batch
                donor = good[k % len(good)]
                out[slot], labels[slot] = out[donor], labels[donor]
        return out, labels, bad

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
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
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


def is_streaming(data: object) -> bool:
    """Whether ``data`` is read on demand (no ``images`` tensor)."""
    return isinstance(data, StreamingImageFolder)


class StepBatches(Dataset):
    """Map-style dataset over steps: item ``s`` is ``(s, uint8 images, labels, bad files)`` of the
    indices ``sampler.indices(s, rank, world)``. Used by :func:`stream_batches`'s workers."""

    def __init__(self, folder: StreamingImageFolder, sampler: BatchSampler, rank: int = 0, world: int = 1):
        self.folder, self.sampler, self.rank, self.world = folder, sampler, rank, world

    def __getitem__(self, step: int) -> tuple[int, torch.Tensor, torch.Tensor, list[list[str]]]:
        images, labels, bad = self.folder.decode(self.sampler.indices(step, self.rank, self.world))
        return step, images, labels, bad


def default_workers() -> int:
    """DataLoader workers per training process: the CPU cores this process may use, shared by the
    processes of this machine (``LOCAL_WORLD_SIZE``), at least 1 and at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, min(8, cores // local))


def _worker_init(_worker_id: int) -> None:
    # Ctrl-C reaches the whole process group: the trainer finishes its step and checkpoints, so a
    # worker must not die first (the trainer then stops it).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def stream_batches(folder: StreamingImageFolder, sampler: BatchSampler, steps: range, *, rank: int = 0,
                   world: int = 1, num_workers: int | None = None, prefetch_factor: int = 2,
                   pin_memory: bool = False) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield ``(step, uint8 [b, 3, S, S], int64 [b])`` for every step of ``steps``, in order.

    ``num_workers`` processes (default ``folder.workers``, else :func:`default_workers`; 0
    decodes in this process) each decode whole batches, ``prefetch_factor`` batches ahead. Start
    at the resumed step (``range(resumed, end)``) to continue a run exactly. Unreadable files warn
    once each (``on_bad_file="skip"``) or raise :class:`DataError` naming them (``"error"``), as
    does a batch with no readable image at all. Closing the generator stops the workers.
    """
    workers = num_workers if num_workers is not None else folder.workers
    workers = default_workers() if workers is None else workers
    loader = DataLoader(StepBatches(folder, sampler, rank, world), batch_size=None, sampler=steps,
                        num_workers=workers, prefetch_factor=prefetch_factor if workers else None,
                        pin_memory=pin_memory, persistent_workers=False,
                        worker_init_fn=_worker_init if workers else None)
    warned: set[str] = set()
    batches = iter(loader)
    try:
        for step, images, labels, bad in batches:
            if bad:
                _report(folder, bad, warned, len(images))
            yield step, images, labels
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:  # now, not whenever the iterator is garbage-collected
            shutdown()


def stream_images(folder: StreamingImageFolder, batch_size: int, *, num_workers: int | None = None,
                  pin_memory: bool = False) -> Iterator[torch.Tensor]:
    """The whole split in file order as uint8 batches of ``batch_size`` (the last may be short), for
    feature extraction: one batch at a time, never the whole split."""
    order = SequentialBatches(len(folder), batch_size)
    for _, images, _ in stream_batches(folder, order, range(order.num_steps), num_workers=num_workers,
                                       pin_memory=pin_memory):
        yield images


class StepStream:
    """A trainer's data source for a streaming split: ``batch(step)`` -> this process's uint8
    images and labels of ``step``, decoded ahead by DataLoader workers.

    One loader runs over ``range(step, stop)``; asking for any step other than the next one (the
    first call, a resume, a benchmark going back) restarts it there. An item depends only on its
    step, so a restart costs time, never a different batch.
    """

    def __init__(self, folder: StreamingImageFolder, sampler: BatchSampler, *, stop: int, rank: int = 0,
                 world: int = 1, num_workers: int | None = None, pin_memory: bool = False):
        self.folder, self.sampler, self.stop, self.rank, self.world = folder, sampler, stop, rank, world
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self._batches: Iterator[tuple[int, torch.Tensor, torch.Tensor]] | None = None
        self._next = -1

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._batches is None or step != self._next:
            self.close()
            self._batches = stream_batches(self.folder, self.sampler, range(step, max(self.stop, step + 1)),
                                           rank=self.rank, world=self.world, num_workers=self.num_workers,
                                           pin_memory=self.pin_memory)
        got, images, labels = next(self._batches)
        assert got == step, (got, step)  # the loader yields its range in order
        self._next = step + 1
        return images, labels

    def close(self) -> None:
        """Stop the workers (a later :meth:`batch` starts new ones)."""
        if self._batches is not None:
            self._batches.close()
            self._batches, self._next = None, -1


def _report(folder: StreamingImageFolder, bad: list[list[str]], warned: set[str], batch: int) -> None:
    listed = ", ".join(f"{f} ({why})" for f, why in bad[:5])
    if len(bad) >= batch:
        raise DataError(f"{folder.setting}={folder.root}: no image of a batch could be read: {listed}")
    if folder.on_bad_file == "error":
        raise DataError(f"{folder.setting}={folder.root}: unreadable image(s): {listed} "
                        "(data.on_bad_file=skip replaces them with another image of the batch)")
    new = [f for f, _ in bad if f not in warned]
    if new:
        warned.update(new)
        warnings.warn(f"{folder.setting}={folder.root}: unreadable image(s), replaced in their batch by another "
                      f"image: {listed}", stacklevel=3)
