"""Datasets as in-memory uint8 tensors: ``load_dataset(name, split, ...) -> ImageDataset``;
``open_split(cfg.data, split)``: a :class:`Split`, in memory or streamed (one protocol for both).

``DATASETS`` is the one registry (name -> loader); add to it with ``register_dataset``.
"""

from selfsup.data import imagefolder as _imagefolder  # noqa: F401  (registers data.name=imagefolder)
from selfsup.data import sequences as _sequences  # noqa: F401  (registers data.name=sequence)
from selfsup.data import shards as _shards  # noqa: F401  (registers data.name=shards)
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
from selfsup.data.split import Split, open_split

__all__ = [
    "DATASETS",
    "ImageDataset",
    "channel_stats",
    "default_cache_dir",
    "load_dataset",
    "make_dataset",
    "open_split",
    "register_dataset",
    "resize_uint8",
    "Split",
]
