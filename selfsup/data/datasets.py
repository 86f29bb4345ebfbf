"""In-memory image datasets and their registry.

Every loader returns an :class:`ImageDataset`: the whole split as one uint8 tensor
``[N, C, H, W]`` plus int64 labels, so a training batch is an index slice (and the tensor can
live on the GPU). Augmentation happens later, batched, on the device.

Registered datasets (see :data:`DATASETS`): ``digits`` (scikit-learn's bundled 8x8 digits),
``synthetic`` (generated, for tests), ``imagefolder`` (a folder of class sub-folders, decoded
once and cached), ``cifar10`` / ``cifar100`` / ``stl10`` through ``torchvision.datasets``, and
``sequence`` (float sequences ``[N, T, D]`` from a file; :mod:`selfsup.data.sequences`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.core.errors import DataError
from selfsup.core.registry import DATASETS
from selfsup.data.fingerprint import tensor_fingerprint
from selfsup.data.step_loader import BatchSampler, SliceSteps

SPLITS = ("train", "val")


@dataclass
class ImageDataset:
    """One split of a dataset, wholly in memory.

    Attributes:
        images: uint8 ``[N, C, H, W]``, ``C`` in {1, 3}, contiguous, on the CPU; or float32 for
            data that are not images (``sequence``: ``[N, D, T, 1]``, NaN = padding), which is
            normalised but never augmented.
        labels: int64 ``[N]``; class indices into ``classes`` (for evaluation only); ``-1``: unlabelled.
        classes: class names; ``classes[labels[i]]`` names sample ``i``; empty for unlabelled images.
        mean: per-channel mean of ``images / 255`` (float images: of ``images``) over this split (length ``C``).
        std: per-channel standard deviation of ``images / 255`` over this split (length ``C``).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """``(C, H, W)`` of one sample (``images.shape[1:]``); a streaming split has the same."""
        return tuple(self.images.shape[1:])

    # The Split protocol (selfsup.data.split.Split): what the trainer and the evaluation read.

    @property
    def is_image(self) -> bool:
        """uint8 images (augmented in training); ``False``: float non-image data (sequences)."""
        return not self.images.is_floating_point()

    @property
    def has_padding(self) -> bool:
        """Float non-image data with NaN padding (variable-length sequences)."""
        return self.images.is_floating_point() and bool(torch.isnan(self.images).any())

    @property
    def random_access(self) -> bool:
        """Always: :meth:`batch` is an index slice of the tensor in memory."""
        return True

    def batch(self, indices: torch.Tensor | Iterable[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images [n, C, H, W], labels [n])`` of ``indices``: an index slice."""
        idx = indices if isinstance(indices, torch.Tensor) else torch.as_tensor(list(indices), dtype=torch.long)
        return self.images[idx], self.labels[idx]

    def step_batches(self, sampler: BatchSampler, *, stop: int, rank: int = 0, world: int = 1,
                     device: torch.device | str | None = None) -> SliceSteps:
        """The trainer's source of step ``s``'s batch: the whole split moved to ``device`` once,
        then ``batch(s)`` slices ``sampler.indices(s, rank, world)`` (``stop`` is not needed)."""
        return SliceSteps(self, sampler, rank=rank, world=world, device=device)

    def sequential_batches(self, batch_size: int, *, pin_memory: bool = False) -> Iterator[torch.Tensor]:
        """The split in order as slices of ``batch_size`` (the last may be short), for feature extraction."""
        return (self.images[start:start + batch_size] for start in range(0, len(self), batch_size))

    def rows(self, start: int, stop: int) -> ImageDataset:
        """Samples ``start .. stop - 1`` (views of the tensors; ``mean`` / ``std`` kept)."""
        return dataclasses.replace(self, images=self.images[start:stop], labels=self.labels[start:stop])

    def grey_to_rgb(self) -> ImageDataset:
        """Three channels: a grey split's channel repeated (``mean`` / ``std`` too); a colour split as it is."""
        if self.shape[0] == 3:
            return self
        if self.shape[0] != 1:
            raise DataError(f"the data have {self.shape[0]} channels: only grey (1) can become colour (3)")
        return dataclasses.replace(self, images=self.images.expand(-1, 3, -1, -1).contiguous(),
                                   mean=tuple(self.mean) * 3, std=tuple(self.std) * 3)

    def fingerprint(self, *, labels: torch.Tensor | None = None, dataset_id: str = "") -> str:
        """sha256 of ``dataset_id``, shape, dtype, the labels (``labels`` or this split's) and up to
        1024 evenly spaced images in full (:func:`~selfsup.data.fingerprint.tensor_fingerprint`)."""
        return tensor_fingerprint(self.images, self.labels if labels is None else labels, dataset_id)

    def describe(self) -> str:
        """One line for the log: size, sample shape and dtype, normalisation."""
        fmt = lambda values: "(" + ", ".join(f"{v:.4f}" for v in values) + ")"  # noqa: E731
        kind = str(self.images.dtype).removeprefix("torch.")
        return (f"in memory: {len(self)} samples, {kind} {'x'.join(map(str, self.shape))}; "
                f"mean {fmt(self.mean)} std {fmt(self.std)}")


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of ``images / 255``.

    Uses a 256-bin histogram per channel (``torch.bincount``), which is exact for uint8 input
    and about ten times faster than summing in float64 (0.1 s for CIFAR-10's train split).

    Args:
        images: uint8 ``[N, C, H, W]``.
    Returns:
        ``(mean, std)``, each a tuple of ``C`` floats (population std).
    """
    if images.is_floating_point():  # non-image data (sequences): the values as they are, NaN = padding
        flat = images.transpose(0, 1).reshape(images.shape[1], -1).double()
        mean_t = flat.nanmean(dim=1)
        std_t = (flat - mean_t[:, None]).pow(2).nanmean(dim=1).sqrt()
        return tuple(mean_t.tolist()), tuple(std_t.tolist())
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        total = counts.sum().clamp_min(1.0)
        mean = float((counts * values).sum() / total)
        var = float((counts * (values - mean) ** 2).sum() / total)
        means.append(mean)
        stds.append(var**0.5)
    return tuple(means), tuple(stds)


def make_dataset(
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: list[str],
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> ImageDataset:
    """Wrap ``images`` (uint8 ``[N, C, H, W]``) and ``labels`` (``[N]``) with their
    ``(mean, std)``, computed unless ``stats`` gives them."""
    images = images.contiguous()
    labels = labels.to(torch.int64).contiguous()
    mean, std = stats if stats is not None else channel_stats(images)
    return ImageDataset(images, labels, list(classes), tuple(mean), tuple(std))


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize uint8 ``[N, C, H, W]`` to ``[N, C, size, size]`` (bilinear, antialiased).

    Works in chunks so that the float copy stays small for large splits.
    """
    if size < 1:
        raise DataError(f"data.image_size={size} must be a positive integer")
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


def default_cache_dir() -> Path:
    """``$SELFSUP_CACHE`` if set, else ``~/.cache/selfsup``."""
    return Path(os.environ.get("SELFSUP_CACHE") or Path.home() / ".cache" / "selfsup")


# ---------------------------------------------------------------------------------------------
# Registry

def register_dataset(name: str) -> Callable[[Callable[..., ImageDataset]], Callable[..., ImageDataset]]:
    """Decorator adding a loader ``fn(split, **options) -> ImageDataset`` to :data:`DATASETS` under ``name``."""
    return DATASETS.register(name)


def load_dataset(
    name: str,
    split: str,
    *,
    root: str | None = None,
    train_path: str | None = None,
    val_path: str | None = None,
    image_size: int | None = None,
    download: bool = False,
    cache_dir: str | None = None,
    num_samples: int | None = None,
    num_classes: int | None = None,
    seed: int = 0,
    on_bad_file: str = "skip",
) -> ImageDataset:
    """Load one split of a registered dataset as an :class:`ImageDataset`.

    Args:
        name: a key of :data:`DATASETS` (``data.name``).
        split: ``"train"`` or ``"val"`` (``stl10`` also takes ``"unlabeled"``).
        root: where torchvision datasets live (default: ``<cache_dir>/torchvision``); for
            ``imagefolder``, a folder whose ``train/`` and ``val/`` (or ``test/``) are used
            when ``train_path`` / ``val_path`` are not given.
        train_path, val_path: ImageFolder roots (``data.train`` / ``data.val``).
        image_size: resize to ``image_size x image_size`` (``data.image_size``).
        download: let torchvision download missing files.
        cache_dir: decoded-image cache (default ``$SELFSUP_CACHE`` or ``~/.cache/selfsup``).
        num_samples: ``synthetic``: samples per split; others: a random subset of this size.
        num_classes: ``synthetic`` only.
        seed: ``synthetic`` content and the ``num_samples`` subset; fixed splits ignore it.
        on_bad_file: ``imagefolder``: ``"skip"`` unreadable files (one warning naming them) or
            ``"error"`` (``data.on_bad_file``).
    Returns:
        The split; ``images`` uint8 ``[N, C, H, W]``, ``labels`` int64 ``[N]``.
    Raises:
        DataError: unknown name or split, missing or unreadable data, settings that do not apply.
    """
    _check_options(name, split, train_path, val_path, image_size, num_samples, num_classes)
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    ds = DATASETS.get(name)(
        split,
        root=root,
        train_path=train_path,
        val_path=val_path,
        image_size=image_size,
        download=download,
        cache_dir=cache,
        num_samples=num_samples,
        num_classes=num_classes,
        seed=seed,
        on_bad_file=on_bad_file,
    )
    if num_samples is not None and name != "synthetic" and num_samples < len(ds):
        ds = subset(ds, num_samples, seed)
    return ds


def _check_options(
    name: str,
    split: str,
    train_path: str | None,
    val_path: str | None,
    image_size: int | None,
    num_samples: int | None,
    num_classes: int | None,
) -> None:
    """Raise :class:`DataError` for an unknown name or split, or a setting that does not apply."""
    DATASETS.get(name)  # an unknown name: one DataError with the closest known name
    if split not in SPLITS + ("unlabeled",):
        raise DataError(f"unknown split {split!r} for {name!r}: use 'train' or 'val' (stl10: 'unlabeled')")
    if name not in ("imagefolder", "sequence", "shards") and (train_path is not None or val_path is not None):
        raise DataError(f"data.train / data.val apply only to data.name=imagefolder, shards or sequence, not {name!r}")
    if name != "synthetic" and num_classes is not None:
        raise DataError(f"data.num_classes applies only to data.name=synthetic, not {name!r}")
    if num_samples is not None and num_samples < 1:
        raise DataError(f"data.num_samples={num_samples} must be a positive integer")
    if image_size is not None and image_size < 1:
        raise DataError(f"data.image_size={image_size} must be a positive integer")
    if split == "unlabeled" and name != "stl10":
        raise DataError(f"split 'unlabeled' exists only for data.name=stl10, not {name!r}")


def subset(ds: ImageDataset, n: int, seed: int) -> ImageDataset:
    """A random subset of ``n`` samples (in their original order), with fresh stats."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=gen)[:n].sort().values
    return make_dataset(ds.images[idx], ds.labels[idx], ds.classes)


# ---------------------------------------------------------------------------------------------
# Built-in loaders


@register_dataset("digits")
def load_digits_dataset(split: str, *, image_size: int | None = None, **_: object) -> ImageDataset:
    """scikit-learn's 1797 8x8 handwritten digits (C=1), values 0..16 scaled to 0..255.

    The split is stratified and fixed (seed 0, independent of ``seed``): per class, a random
    20% goes to ``val`` and the rest to ``train``, so runs with different seeds evaluate alike.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # [N, 8, 8]
    targets = bunch.target.astype(np.int64)
    rng = np.random.default_rng(0)
    val_mask = np.zeros(len(targets), dtype=bool)
    for c in np.unique(targets):
        idx = rng.permutation(np.flatnonzero(targets == c))
        val_mask[idx[: int(round(0.2 * len(idx)))]] = True
    keep = val_mask if split == "val" else ~val_mask
    images = torch.from_numpy(pixels[keep]).unsqueeze(1)  # [n, 1, 8, 8]
    if image_size is not None:
        images = resize_uint8(images, image_size)
    return make_dataset(images, torch.from_numpy(targets[keep]), [str(c) for c in range(10)])


@register_dataset("synthetic")
def load_synthetic_dataset(
    split: str,
    *,
    image_size: int | None = None,
    num_samples: int | None = None,
    num_classes: int | None = None,
    seed: int = 0,
    **_: object,
) -> ImageDataset:
    """Generated RGB images whose class is visible in the pixels.

    Each class has a smooth random pattern (a 4x4 random field upsampled to full size) plus a
    base colour; each sample is its class pattern, circularly shifted by up to 1/8 of the side,
    scaled in contrast and brightness, with Gaussian pixel noise. Class patterns depend only on
    ``seed``; samples depend on ``(seed, split)``, so train and val differ but share classes.
    Defaults: 512 train / 128 val samples, 4 classes, 32x32.
    """
    size = image_size or 32
    k = num_classes or 4
    if k < 1:
        raise DataError(f"data.num_classes={k} must be a positive integer")
    n = num_samples or (512 if split == "train" else 128)
    gen = torch.Generator().manual_seed(seed)
    field = torch.rand(k, 3, 4, 4, generator=gen)
    colour = torch.rand(k, 3, 1, 1, generator=gen)
    patterns = 0.5 * F.interpolate(field, size=(size, size), mode="bicubic", align_corners=False)
    patterns = patterns + 0.5 * colour  # [k, 3, size, size], roughly in [0, 1]

    gen = torch.Generator().manual_seed(seed * 1000 + 1 + SPLITS.index(split))
    labels = torch.arange(n) % k
    labels = labels[torch.randperm(n, generator=gen)]
    shift = max(1, size // 8)
    shifts = torch.randint(-shift, shift + 1, (n, 2), generator=gen)
    rows = (torch.arange(size)[None, :] - shifts[:, :1]) % size  # [n, size]
    cols = (torch.arange(size)[None, :] - shifts[:, 1:]) % size
    x = patterns[labels]  # [n, 3, size, size]
    x = x[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # [n, s, s, 3]
    x = x.permute(0, 3, 1, 2)
    contrast = 0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=gen)
    brightness = 0.1 * (torch.rand(n, 1, 1, 1, generator=gen) - 0.5)
    x = (x - 0.5) * contrast + 0.5 + brightness + 0.05 * torch.randn(x.shape, generator=gen)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
    return make_dataset(images, labels, [f"class{i}" for i in range(k)])


_TORCHVISION = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "stl10": "STL10"}


def _load_torchvision(
    name: str,
    split: str,
    *,
    root: str | None = None,
    image_size: int | None = None,
    download: bool = False,
    cache_dir: Path,
    **_: object,
) -> ImageDataset:
    """CIFAR-10/100 (``val`` = the test set) or STL-10 (``train``, ``val`` = test, ``unlabeled``).

    Files come from ``root`` (default ``<cache_dir>/torchvision``) in torchvision's layout.
    STL-10's unlabeled split has label -1 everywhere.
    """
    import torchvision.datasets as tvd

    folder = Path(root).expanduser() if root else cache_dir / "torchvision"
    if name == "stl10":
        kwargs: dict[str, object] = {"split": "test" if split == "val" else split}
    else:
        kwargs = {"train": split == "train"}
    try:
        ds = getattr(tvd, _TORCHVISION[name])(str(folder), download=download, **kwargs)
    except (RuntimeError, OSError) as e:  # absent/corrupt files: RuntimeError; offline: URLError
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if download:
            what = f"could not download {name} into {folder} ({reason}): downloading needs internet"
        else:
            what = f"{name} files not found under {folder} ({reason}): data.download=true fetches them"
            what += " (needs internet)"
        raise DataError(
            f"{what}; or point at local torchvision files with data.root=...; "
            "or use data.name=imagefolder data.train=... data.val=..."
        ) from e
    if name == "stl10":
        images = torch.from_numpy(ds.data)  # already [N, 3, 96, 96]
        labels = torch.as_tensor(ds.labels, dtype=torch.int64)
    else:
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2)  # [N, 32, 32, 3] -> NCHW
        labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    images = images.contiguous()
    if image_size is not None:
        images = resize_uint8(images, image_size)
    return make_dataset(images, labels, list(ds.classes))


for _name in _TORCHVISION:
    register_dataset(_name)(partial(_load_torchvision, _name))
