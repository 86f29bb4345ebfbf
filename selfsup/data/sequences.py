"""Plain sequence datasets: ``data.name=sequence data.train=FILE data.val=FILE``.

A file (``.npz`` read with ``numpy.load(allow_pickle=False)``, or ``.pt`` read with
``torch.load(weights_only=True)``) holds:

- ``x``: float ``[N, T, D]``, N sequences of T steps with D features;
- ``y``: int ``[N]``, class indices;
- ``lengths`` (optional): int ``[N]`` in ``[1, T]``; steps from ``lengths[i]`` on are padding;
- ``classes`` (optional): ``[K]`` class names.

The split becomes an :class:`ImageDataset` whose ``images`` are float32 ``[N, D, T, 1]``: the D
features are channels (normalised per feature with the training split's mean and std, as image
channels are) and the T steps are pixel rows, so a sequence backbone reading rows
(:mod:`selfsup.models.sequence_backbones`) sees exactly the T steps of D features. Padding steps are NaN, which the
sequence backbones turn into lengths. Float data is never augmented (:class:`selfsup.data.augment.ViewMaker`),
so it suits the supervised baseline, not the self-supervised methods.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from selfsup.core.errors import DataError
from selfsup.data.datasets import ImageDataset, make_dataset, register_dataset

__all__ = ["load_sequence_dataset", "read_sequence_file"]


def read_sequence_file(path: str | Path) -> dict[str, torch.Tensor | list[str]]:
    """The arrays of an .npz / .pt sequence file: ``x`` float32 [N, T, D], ``y`` int64 [N],
    optional ``lengths`` int64 [N] and ``classes`` list of K names."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"sequence file not found: {path}")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                raw = {k: npz[k] for k in npz.files}
        elif path.suffix == ".pt":
            raw = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise DataError(f"sequence file {path} must end in .npz or .pt")
    except DataError:
        raise
    except Exception as exc:  # numpy / torch raise many types for corrupt files
        raise DataError(f"unreadable sequence file {path}: {exc}") from exc
    if not isinstance(raw, dict) or "x" not in raw or "y" not in raw:
        raise DataError(f"sequence file {path} must hold 'x' [N, T, D] and 'y' [N] (optional 'lengths', 'classes')")
    out: dict[str, torch.Tensor | list[str]] = {
        "x": torch.as_tensor(np.asarray(raw["x"]), dtype=torch.float32),
        "y": torch.as_tensor(np.asarray(raw["y"])),
    }
    if "lengths" in raw:
        out["lengths"] = torch.as_tensor(np.asarray(raw["lengths"]))
    if "classes" in raw:
        out["classes"] = [str(c) for c in np.asarray(raw["classes"]).tolist()]
    return out


def _check(path: str, x: torch.Tensor, y: torch.Tensor, lengths: torch.Tensor) -> None:
    """Raise DataError for bad shapes, labels, lengths, or non-finite values inside the sequences."""
    if x.dim() != 3 or x.shape[0] == 0 or min(x.shape) < 1:
        raise DataError(f"{path}: x must be [N, T, D] with N, T, D >= 1, got {list(x.shape)}")
    if y.shape != (x.shape[0],) or y.is_floating_point() or bool((y < 0).any()):
        raise DataError(f"{path}: y must hold N={x.shape[0]} non-negative integer labels, got {y.dtype} {list(y.shape)}")
    if lengths.shape != (x.shape[0],) or bool((lengths < 1).any() | (lengths > x.shape[1]).any()):
        raise DataError(f"{path}: lengths must hold N={x.shape[0]} integers in [1, T={x.shape[1]}]")
    valid = torch.arange(x.shape[1])[None, :] < lengths[:, None]  # [N, T]
    if not bool(torch.isfinite(x[valid]).all()):
        raise DataError(f"{path}: x has NaN or infinite values inside the sequences")


def _feature_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-feature mean and std of ``x`` [N, T, D] over the non-padding (non-NaN) steps; std 0 -> 1."""
    flat = x.reshape(-1, x.shape[-1]).double()
    flat = flat[~torch.isnan(flat).all(dim=1)]
    mean = flat.mean(dim=0)
    std = flat.std(dim=0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant feature is only centred
    return tuple(mean.tolist()), tuple(std.tolist())


@register_dataset("sequence")
def load_sequence_dataset(split: str, *, train_path: str | None = None, val_path: str | None = None,
                          **_: object) -> ImageDataset:
    """One split of a sequence file as float32 ``[N, D, T, 1]`` (see the module docstring)."""
    key, path = ("data.train", train_path) if split == "train" else ("data.val", val_path)
    if path is None:
        raise DataError(f"{key} is not set: data.name=sequence needs data.train=FILE and data.val=FILE (.npz or .pt)")
    raw = read_sequence_file(path)
    x, y = raw["x"].clone(), raw["y"].to(torch.int64)
    lengths = raw.get("lengths", torch.full((x.shape[0],), x.shape[1]))
    _check(path, x, raw["y"], lengths)
    x[torch.arange(x.shape[1])[None, :] >= lengths[:, None]] = float("nan")  # padding marker
    classes = raw.get("classes") or [str(c) for c in range(int(y.max()) + 1)]
    if int(y.max()) >= len(classes):
        raise DataError(f"{path}: label {int(y.max())} has no entry in 'classes' ({len(classes)} names)")
    images = x.permute(0, 2, 1).unsqueeze(-1).contiguous()  # [N, D, T, 1]
    return make_dataset(images, y, classes, stats=_feature_stats(x))
