"""One split of the configured data: ``open_split(cfg.data, "train")``, in memory or streamed.

Both kinds, :class:`~selfsup.data.datasets.ImageDataset` (the whole split as one tensor) and
:class:`~selfsup.data.streaming.StreamingImageFolder` (files decoded on demand by DataLoader
workers), implement :class:`Split`, and code outside :mod:`selfsup.data` reads a split only
through it: it never asks which kind it has. For the same indices both give the same uint8 pixels.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Protocol, runtime_checkable

import torch

from selfsup.config import DataConfig
from selfsup.data.datasets import load_dataset
from selfsup.data.step_loader import BatchSampler
from selfsup.data.shards import open_shards
from selfsup.data.streaming import open_streamed

__all__ = ["BatchSampler", "Split", "StepSource", "open_split"]


class StepSource(Protocol):
    """A trainer's data for one run: ``batch(step)`` -> this process's batch of ``step``."""

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images [b, C, H, W], int64 labels [b])`` of the sampler's indices of ``step`` for this process."""
        ...

    def close(self) -> None:
        """Release what serves the batches (DataLoader workers); a later ``batch`` may start again."""
        ...


@runtime_checkable
class Split(Protocol):
    """One split of a dataset, however it is held: what training and evaluation read.

    Attributes:
        labels: int64 ``[N]``, class indices into ``classes``; ``-1`` for unlabelled images.
        classes: class names; empty for unlabelled images (an image folder without class sub-folders):
            such a split trains label-free methods; whatever reads labels refuses it or stands aside.
        mean, std: per-channel statistics of ``images / 255`` (of the values, for non-image data),
            ``C`` floats each: what training and evaluation normalise with.
    """

    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __len__(self) -> int: ...

    @property
    def shape(self) -> tuple[int, ...]:
        """``(C, H, W)`` of one sample (non-image data: ``(D, T, 1)``)."""
        ...

    @property
    def is_image(self) -> bool:
        """uint8 images, augmented in training; ``False``: float non-image data (sequences), used as they are."""
        ...

    @property
    def has_padding(self) -> bool:
        """Non-image data with NaN padding (variable-length sequences)."""
        ...

    @property
    def random_access(self) -> bool:
        """Whether :meth:`batch` is cheap in any order (an index slice in memory); ``False``: it decodes
        files in this process, fine for a few batches, too slow to train on in random order."""
        ...

    def batch(self, indices: torch.Tensor | Iterable[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images [n, C, H, W], int64 labels [n])`` of ``indices``: uint8 pixels (float for non-image data)."""
        ...

    def step_batches(self, sampler: BatchSampler, *, stop: int, rank: int = 0, world: int = 1,
                     device: torch.device | str | None = None) -> StepSource:
        """The training data of a run over steps ``< stop``: ``source.batch(s)`` is the batch of
        ``sampler.indices(s, rank, world)``, made ready for ``device`` (in memory: the split moved there
        once; streamed: decoded ahead by DataLoader workers, pinned for a GPU, then moved by the caller)."""
        ...

    def sequential_batches(self, batch_size: int, *, pin_memory: bool = False) -> Iterator[torch.Tensor]:
        """The whole split in order as image batches of ``batch_size`` (the last may be short), for feature
        extraction: one batch at a time, never the whole split at once when streamed."""
        ...

    def rows(self, start: int, stop: int) -> Split:
        """Samples ``start .. stop - 1`` as a split of the same kind (one process's share)."""
        ...

    def grey_to_rgb(self) -> Split:
        """Three channels: a grey split's channel repeated, ``mean`` / ``std`` too; a colour split as it is."""
        ...

    def fingerprint(self, *, labels: torch.Tensor | None = None, dataset_id: str = "") -> str:
        """sha256 of the split's identity (contents or files, labels, ``dataset_id``), for feature caches."""
        ...

    def describe(self) -> str:
        """One line for the log: what the split is and how it is read."""
        ...


def open_split(data: DataConfig, split: str, *, seed: int = 0) -> Split:
    """``split`` ("train" | "val") of the ``data`` config section.

    A large imagefolder split (decoded size above ``data.in_memory_max_gb``, or
    ``data.streaming=always``) is read on demand by DataLoader workers; everything else is loaded
    into memory. ``seed`` (``trainer.seed``) picks synthetic data and ``data.num_samples`` subsets.
    """
    if data.name == "shards":  # tar shards: in memory up to data.in_memory_max_gb, else streamed (selfsup.data.shards)
        return open_shards(data, split, seed=seed)
    streamed = open_streamed(data, split, seed=seed)
    if streamed is not None:
        return streamed
    return load_dataset(data.name, split, root=data.root, train_path=data.train, val_path=data.val,
                        image_size=data.image_size, download=data.download, cache_dir=data.cache_dir,
                        num_samples=data.num_samples, num_classes=data.num_classes, seed=seed,
                        on_bad_file=data.on_bad_file)
