"""Frozen-feature extraction: run an encoder over a uint8 image tensor once, keep the features.

kNN and linear probes (see :mod:`selfsup.evaluation.knn`, :mod:`selfsup.evaluation.linear`)
work on these cached features, so the encoder runs exactly once per evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.errors import DataError, SelfsupError
from selfsup.progress import progress_bar

__all__ = ["extract_features"]


def _resolve_device(encoder: nn.Module, device: torch.device | str | None) -> torch.device:
    """The device to run on: ``device`` if given, else where the encoder's first parameter
    (or buffer) lives, else the CPU."""
    if device is not None:
        return torch.device(device)
    for tensor in encoder.parameters():
        return tensor.device
    for tensor in encoder.buffers():
        return tensor.device
    return torch.device("cpu")


def _channel_stats(
    values: Sequence[float] | torch.Tensor, name: str, channels: int, device: torch.device
) -> torch.Tensor:
    """``mean`` or ``std`` as a float32 tensor of shape [1, C, 1, 1] on ``device``."""
    stats = torch.as_tensor(values, dtype=torch.float32).flatten()
    if stats.numel() == 1:
        stats = stats.expand(channels)
    if stats.numel() != channels:
        raise DataError(f"{name} has {stats.numel()} values but the images have {channels} channels")
    if name == "std":
        if bool((stats < 0).any()):
            raise DataError(f"std must not be negative, got {stats.tolist()}")
        # A constant channel has std 0; it is centred to 0 whatever the divisor, so divide by 1.
        stats = torch.where(stats > 0, stats, torch.ones_like(stats))
    return stats.to(device).view(1, channels, 1, 1)


def _check_images(images: torch.Tensor) -> None:
    """Raise :class:`DataError` unless ``images`` is a non-empty uint8 tensor [N, C, H, W]
    (or float32: data that are not images, e.g. sequences, used as they are)."""
    if not isinstance(images, torch.Tensor):
        raise DataError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype not in (torch.uint8, torch.float32) or images.dim() != 4:
        raise DataError(
            f"images must be uint8 [N, C, H, W] (float32 for non-image data), got {images.dtype} "
            f"with shape {tuple(images.shape)}"
        )
    if images.shape[0] == 0:
        raise DataError("images is empty (N = 0): nothing to extract features from")


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    images: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    *,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    image_size: int | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Run a frozen ``encoder`` over ``images`` batch by batch and return its features.

    Each batch is moved to ``device``, converted to float in [0, 1] (``/ 255``), resized to
    ``image_size`` x ``image_size`` if given (bilinear, antialiased when shrinking, as
    torchvision's ``Resize`` does on tensors), normalised with ``(x - mean) / std`` and fed
    to the encoder under :func:`torch.inference_mode`. The encoder is put in eval mode for
    the pass; every submodule's own train/eval flag is restored afterwards.

    Channel handling is the caller's business: a grayscale [N, 1, H, W] tensor is passed
    through as is, even if the encoder expects 3 channels.

    Args:
        encoder: maps float [B, C, H', W'] (normalised) to features [B, D].
        images: uint8 [N, C, H, W] (or float32 non-image data, not divided by 255), on the CPU or on ``device``.
        mean: per-channel mean, C values (or one value for all channels), in [0, 1] units.
        std: per-channel standard deviation, same form as ``mean``.
        batch_size: images per forward pass.
        device: where to run; default: the device of the encoder's parameters (CPU if none).
        image_size: side length to resize to; ``None`` keeps H x W.
        progress: show a progress bar (plain periodic lines when stderr is not a terminal).

    Returns:
        float32 [N, D] on the CPU.
    """
    _check_images(images)
    if batch_size < 1:
        raise SelfsupError(f"batch_size must be a positive integer, got {batch_size}")
    run_device = _resolve_device(encoder, device)
    channels = images.shape[1]
    mean_t = _channel_stats(mean, "mean", channels, run_device)
    std_t = _channel_stats(std, "std", channels, run_device)

    modes = [(module, module.training) for module in encoder.modules()]
    encoder.eval()
    chunks: list[torch.Tensor] = []
    try:
        with torch.inference_mode():
            starts = range(0, images.shape[0], batch_size)
            for start in progress_bar(starts, desc="features", unit="batch", disable=not progress):
                batch = images[start : start + batch_size].to(run_device, non_blocking=True)
                chunks.append(_forward(encoder, batch, mean_t, std_t, image_size).cpu())
    finally:
        for module, was_training in modes:
            module.training = was_training
    # Concatenating outside inference mode yields an ordinary tensor, so callers may use the
    # features freely (in-place ops, autograd inputs) instead of getting an inference tensor.
    return torch.cat(chunks)


def _forward(
    encoder: nn.Module,
    batch: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    image_size: int | None,
) -> torch.Tensor:
    """uint8 [B, C, H, W] (or float32 non-image data, not rescaled) -> float32 features [B, D] (on the batch's device)."""
    x = batch if batch.is_floating_point() else batch.float().div_(255.0)
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        shrinking = image_size < max(x.shape[-2:])
        x = F.interpolate(
            x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=shrinking
        )
    x = (x - mean) / std
    out = encoder(x)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != batch.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SelfsupError(
            f"the encoder must return features [B, D] for a batch of {batch.shape[0]}, got {shape}"
        )
    return out.float()
