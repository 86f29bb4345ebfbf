"""One split of the configured data: ``open_split(cfg.data, "train")``, in memory or streamed."""
from __future__ import annotations

from selfsup.config import DataConfig
from selfsup.data.datasets import ImageDataset, load_dataset
from selfsup.data.streaming import StreamingImageFolder, open_streamed


def open_split(data: DataConfig, split: str, *, seed: int = 0) -> ImageDataset | StreamingImageFolder:
    """``split`` ("train" | "val") of the ``data`` config section.

    A large imagefolder split (decoded size above ``data.in_memory_max_gb``, or
    ``data.streaming=always``) is read on demand by DataLoader workers; everything else is loaded
    into memory. ``seed`` (``trainer.seed``) picks synthetic data and ``data.num_samples`` subsets.
    """
    streamed = open_streamed(data, split, seed=seed)
    if streamed is not None:
        return streamed
    return load_dataset(data.name, split, root=data.root, train_path=data.train, val_path=data.val,
                        image_size=data.image_size, download=data.download, cache_dir=data.cache_dir,
                        num_samples=data.num_samples, num_classes=data.num_classes, seed=seed,
                        on_bad_file=data.on_bad_file)
