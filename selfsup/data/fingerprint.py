"""Fingerprints of data: sha256 over what identifies a split, cheap enough for every evaluation.

Feature caches (:mod:`selfsup.evaluation.features`) are keyed by them: a split's
:meth:`~selfsup.data.split.Split.fingerprint` and :func:`tensor_fingerprint` for a bare image tensor.
"""
from __future__ import annotations

import hashlib

import torch

SAMPLE_IMAGES = 1024  # images (or files) hashed in full, evenly spaced; the rest is covered by shape and labels


def hash_tensor(hasher, name: str, tensor: torch.Tensor) -> None:
    """Feed ``tensor``'s name, dtype, shape and raw bytes (any dtype, bfloat16 included) to ``hasher``."""
    t = tensor.detach().to("cpu").contiguous()
    hasher.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    hasher.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def sample_rows(num_rows: int) -> torch.Tensor:
    """Up to :data:`SAMPLE_IMAGES` evenly spaced row indices of ``num_rows`` (first and last included)."""
    return torch.linspace(0, num_rows - 1, steps=min(num_rows, SAMPLE_IMAGES)).round().long().unique()


def tensor_fingerprint(images: torch.Tensor, labels: torch.Tensor | None = None, dataset_id: str = "") -> str:
    """sha256 of ``dataset_id``, the images' dtype and shape, every label (if given) and the full
    bytes of up to 1024 evenly spaced images [N, C, H, W]. A change confined to images outside that
    sample goes unnoticed: give such data a new ``dataset_id``."""
    hasher = hashlib.sha256(f"{dataset_id}|{images.dtype}|{tuple(images.shape)}|".encode())
    if labels is not None:
        hash_tensor(hasher, "labels", torch.as_tensor(labels).long())
    hash_tensor(hasher, "sample", images[sample_rows(len(images))])
    return hasher.hexdigest()
