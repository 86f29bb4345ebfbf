"""Datasets as in-memory uint8 tensors: ``load_dataset(name, split, ...) -> ImageDataset``.

``DATASETS`` is the one registry (name -> loader); add to it with ``register_dataset``.
"""

from selfsup.data.datasets import (
    DATASETS,
    ImageDataset,
    channel_stats,
    default_cache_dir,
    load_dataset,
    make_dataset,
    register_dataset,
    resize_uint8,
)
from selfsup.data import sequence as _sequence  # noqa: F401  (registers data.name=sequence)

__all__ = [
    "DATASETS",
    "ImageDataset",
    "channel_stats",
    "default_cache_dir",
    "load_dataset",
    "make_dataset",
    "register_dataset",
    "resize_uint8",
]
