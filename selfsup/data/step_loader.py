"""Step-keyed batches: where a split's ``step_batches`` (training) and ``sequential_batches`` come from.

Step ``s``'s batch is always the indices ``sampler.indices(s, rank, world)`` (a
:class:`BatchSampler`: the trainer's epoch sampler, or :class:`SequentialBatches` for evaluation
order), so the data order is a function of (seed, step) alone and a run resumed at step ``s`` sees
exactly the batches of an uninterrupted one. An in-memory split slices them from its tensors
(:class:`SliceSteps`); a streamed one has DataLoader worker processes decode whole uint8 batches
with ``folder.decode`` (:func:`stream_batches`, :class:`StepStream`).
"""

from __future__ import annotations

import os
import signal
import warnings
from pathlib import Path
from typing import Iterator, Protocol

import torch
from torch.utils.data import DataLoader, Dataset

from selfsup.core.errors import DataError
from selfsup.core.threads import available_cores

__all__ = ["BatchSampler", "Decodable", "SequentialBatches", "SliceSteps", "Sliceable", "StepBatches", "StepStream",
           "default_workers", "report_unreadable", "stream_batches", "stream_images"]


class BatchSampler(Protocol):
    """What a split's ``step_batches`` needs from a sampler: this process's indices of a step."""

    def indices(self, step: int, rank: int, world: int) -> torch.Tensor: ...


class Sliceable(Protocol):
    """What :class:`SliceSteps` needs from an in-memory split: its tensors."""

    images: torch.Tensor
    labels: torch.Tensor


class SliceSteps:
    """An in-memory split's step source: the tensors on ``device``; ``batch(step)`` is an index slice."""

    def __init__(self, data: Sliceable, sampler: BatchSampler, *, rank: int = 0, world: int = 1,
                 device: torch.device | str | None = None):
        device = torch.device(device) if device is not None else data.images.device
        self.images, self.labels = data.images.to(device), data.labels.to(device)
        self.sampler, self.rank, self.world = sampler, rank, world

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's ``(images [b, C, H, W], labels [b])`` of ``step``, on the split's device."""
        idx = self.sampler.indices(step, self.rank, self.world).to(self.images.device)
        return self.images[idx], self.labels[idx]

    def close(self) -> None:
        """Nothing to stop (the streamed source stops its workers here)."""


class Decodable(Protocol):
    """What the loader needs from a streamed split: ``decode`` and what its messages name."""

    root: Path
    setting: str
    on_bad_file: str
    workers: int | None

    def __len__(self) -> int: ...

    def decode(self, indices: torch.Tensor | list[int] | range) -> tuple[torch.Tensor, torch.Tensor, list[list[str]]]: ...


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


class StepBatches(Dataset):
    """Map-style dataset over steps: item ``s`` is ``(s, uint8 images, labels, bad files)`` of the
    indices ``sampler.indices(s, rank, world)``. Used by :func:`stream_batches`'s workers."""

    def __init__(self, folder: Decodable, sampler: BatchSampler, rank: int = 0, world: int = 1):
        self.folder, self.sampler, self.rank, self.world = folder, sampler, rank, world

    def __getitem__(self, step: int) -> tuple[int, torch.Tensor, torch.Tensor, list[list[str]]]:
        images, labels, bad = self.folder.decode(self.sampler.indices(step, self.rank, self.world))
        return step, images, labels, bad


def default_workers() -> int:
    """DataLoader workers per training process: the CPU cores this process may use (affinity and
    cgroup quota, :func:`~selfsup.core.threads.available_cores`), shared by the
    processes of this machine (``LOCAL_WORLD_SIZE``), at least 1 and at most 8."""
    cores = available_cores()
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, min(8, cores // local))


def _worker_init(_worker_id: int) -> None:
    # Ctrl-C reaches the whole process group: the trainer finishes its step and checkpoints, so a
    # worker must not die first (the trainer then stops it).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def stream_batches(folder: Decodable, sampler: BatchSampler, steps: range, *, rank: int = 0,
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
                report_unreadable(folder, bad, warned, len(images))
            yield step, images, labels
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:  # now, not whenever the iterator is garbage-collected
            shutdown()


def stream_images(folder: Decodable, batch_size: int, *, num_workers: int | None = None,
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

    def __init__(self, folder: Decodable, sampler: BatchSampler, *, stop: int, rank: int = 0,
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


def report_unreadable(folder: Decodable, bad: list[list[str]], warned: set[str], batch: int) -> None:
    """Raise or warn (once per file, remembered in ``warned``) about files of a ``batch`` that could not be read."""
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
