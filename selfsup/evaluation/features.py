"""Frozen-feature extraction: run an encoder over a uint8 image tensor (or a split) once, keep the features.

kNN and linear probes (see :mod:`selfsup.evaluation.knn`, :mod:`selfsup.evaluation.linear`)
work on these features, so the encoder runs once per evaluation; :func:`cached_features` also
keeps them on disk, keyed by the encoder's weights, the data and the transform, so a later
protocol on the same encoder does not run it again. With several processes (``shard=True``) each
rank runs the encoder on its share of the rows and the shares are gathered, so every sample is
computed exactly once and every rank ends with all the features.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import safetensors
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.core.distributed import (
    broadcast_tensor,
    gather_rows,
    rank,
    shard_bounds,
    world_size,
)
from selfsup.core.errors import ConfigError, DataError, SelfsupError
from selfsup.core.files import PathError, atomic_write
from selfsup.core.progress import progress_bar
from selfsup.data.fingerprint import hash_tensor, tensor_fingerprint
from selfsup.data.split import Split

__all__ = [
    "extract_features", "cached_features", "feature_cache_key", "encoder_fingerprint", "dataset_fingerprint",
    "transform_fingerprint",
]

POOLS = ("cls", "mean")  # eval.pool: the encoder's own feature, or the mean of a ViT's patch tokens


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
    images: torch.Tensor | Split,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    *,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    image_size: int | None = None,
    progress: bool = True,
    shard: bool = False,
    pool: str = "cls",
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
        images: uint8 [N, C, H, W] (or float32 non-image data, not divided by 255), on the CPU or on ``device``;
            or a :class:`~selfsup.data.split.Split`, read through its ``sequential_batches`` (a streamed
            split: decoded batch by batch in DataLoader workers, never wholly in memory).
        mean: per-channel mean, C values (or one value for all channels), in [0, 1] units.
        std: per-channel standard deviation, same form as ``mean``.
        batch_size: images per forward pass.
        device: where to run; default: the device of the encoder's parameters (CPU if none).
        image_size: side length to resize to; ``None`` keeps H x W.
        progress: show a progress bar (plain periodic lines when stderr is not a terminal).
        shard: when ``torch.distributed`` runs several processes, each rank runs the encoder on its
            contiguous share of the rows only (:func:`~selfsup.core.distributed.shard_bounds`; a split
            by its ``rows``) and the shares are gathered
            (:func:`~selfsup.core.distributed.gather_rows`): every rank returns the same [N, D], in row
            order, each row computed once. Every rank must call it, with the same arguments; only
            rank 0 shows progress. With fewer rows than processes every rank extracts them all.
            One process: ignored.
        pool: ``"cls"``: the encoder's own output (a timm ViT's pooled feature: its class token unless its
            ``global_pool`` says otherwise); ``"mean"``: the mean of a ViT's patch tokens after the final
            norm, ``encoder.forward_patches(x).mean(1)`` (:mod:`selfsup.models.vit_patches`; ``eval.pool``).

    Returns:
        float32 [N, D] on the CPU.
    """
    _check_input(images)
    check_pool(encoder, pool)
    if batch_size < 1:
        raise SelfsupError(f"batch_size must be a positive integer, got {batch_size}")
    total = len(images)
    sharded = _shards(shard, total)
    if sharded:
        images = _rows(images, *shard_bounds(total))
        progress = progress and rank() == 0
    run_device = _resolve_device(encoder, device)
    channels = images.shape[1] if isinstance(images, torch.Tensor) else images.shape[0]
    mean_t = _channel_stats(mean, "mean", channels, run_device)
    std_t = _channel_stats(std, "std", channels, run_device)

    modes = [(module, module.training) for module in encoder.modules()]
    encoder.eval()
    chunks: list[torch.Tensor] = []
    try:
        with torch.inference_mode():
            if isinstance(images, torch.Tensor):
                batches = (images[start : start + batch_size] for start in range(0, images.shape[0], batch_size))
            else:
                batches = images.sequential_batches(batch_size, pin_memory=run_device.type == "cuda")
            for batch in progress_bar(batches, total=-(-len(images) // batch_size), desc="features", unit="batch",
                                      disable=not progress):
                batch = batch.to(run_device, non_blocking=True)
                chunks.append(_forward(encoder, batch, mean_t, std_t, image_size, pool).cpu())
    finally:
        for module, was_training in modes:
            module.training = was_training
    # Concatenating outside inference mode yields an ordinary tensor, so callers may use the
    # features freely (in-place ops, autograd inputs) instead of getting an inference tensor.
    features = torch.cat(chunks)
    return gather_rows(features, total) if sharded else features


def check_pool(encoder: nn.Module, pool: str) -> None:
    """One-line :class:`ConfigError` for an unknown ``pool``, or ``"mean"`` on an encoder without patch tokens."""
    if pool not in POOLS:
        raise ConfigError(f"eval.pool={pool!r}: choose one of {', '.join(POOLS)}")
    if pool == "mean" and not callable(getattr(encoder, "forward_patches", None)):
        name = (getattr(encoder, "selfsup_spec", None) or {}).get("name", type(encoder).__name__)
        raise ConfigError(f"eval.pool=mean averages a ViT's patch tokens; {name} has none (use eval.pool=cls)")


def _shards(shard: bool, num_rows: int) -> bool:
    """Whether extraction is split over the processes: asked for, several processes, and a row for each."""
    return shard and world_size() > 1 and num_rows >= world_size()


def _rows(images: torch.Tensor | Split, start: int, stop: int) -> torch.Tensor | Split:
    """Rows ``start .. stop - 1`` of ``images``: a view [stop - start, C, H, W] of a tensor, or the
    split's :meth:`~selfsup.data.split.Split.rows`."""
    return images[start:stop] if isinstance(images, torch.Tensor) else images.rows(start, stop)


def _check_input(images: torch.Tensor | Split) -> None:
    """:func:`_check_images` for a tensor; a split (its own kind checked where it was made) must not be empty."""
    if isinstance(images, torch.Tensor):
        _check_images(images)
    elif len(images) == 0:
        raise DataError("images is empty (N = 0): nothing to extract features from")


def _forward(
    encoder: nn.Module,
    batch: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    image_size: int | None,
    pool: str = "cls",
) -> torch.Tensor:
    """uint8 [B, C, H, W] (or float32 non-image data, not rescaled) -> float32 features [B, D] (on the batch's device)."""
    x = batch if batch.is_floating_point() else batch.float().div_(255.0)
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        shrinking = image_size < max(x.shape[-2:])
        x = F.interpolate(
            x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=shrinking
        )
    x = (x - mean) / std
    out = encoder(x) if pool == "cls" else encoder.forward_patches(x).mean(dim=1)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != batch.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SelfsupError(
            f"the encoder must return features [B, D] for a batch of {batch.shape[0]}, got {shape}"
        )
    return out.float()


# ----------------------------------------------------------------------------- on-disk cache

CACHE_FORMAT = 1  # bump when extraction changes in a way that alters features


def encoder_fingerprint(encoder: nn.Module) -> str:
    """sha256 over the encoder's class, ``selfsup_spec`` and every state-dict tensor (name, dtype, shape, bytes).

    Any change of a weight or a buffer (BN statistics) changes it; about 0.1 s for a ResNet-18.
    """
    encoder = getattr(encoder, "_orig_mod", encoder)  # torch.compile wrapper: hash the module itself
    hasher = hashlib.sha256(f"{type(encoder).__module__}.{type(encoder).__qualname__}|".encode())
    spec = getattr(encoder, "selfsup_spec", None)
    hasher.update(json.dumps(spec, sort_keys=True, default=str).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        hash_tensor(hasher, name, tensor)
    return hasher.hexdigest()


def dataset_fingerprint(images: torch.Tensor | Split, labels: torch.Tensor | None = None,
                        dataset_id: str = "") -> str:
    """sha256 of a dataset's identity, cheap enough to compute on every evaluation.

    An image tensor: ``dataset_id`` (its name or path), the images' shape and dtype, every label
    (if given), and the full bytes of up to 1024 evenly spaced images (first and last included). A
    change confined to images outside that sample goes unnoticed: give such data a new
    ``dataset_id``. A split: its :meth:`~selfsup.data.split.Split.fingerprint` (in memory: as a
    tensor, with its labels; streamed: its folder, canvas size, every file name and label, and the
    size and modification time of up to 1024 evenly spaced files).
    """
    if isinstance(images, torch.Tensor):
        return tensor_fingerprint(images, labels, dataset_id)
    return images.fingerprint(labels=labels, dataset_id=dataset_id)


def transform_fingerprint(mean, std, image_size: int | None, pool: str = "cls") -> str:
    """sha256 of the evaluation transform: normalisation, resize, pooling, and the cache format (``pool="cls"``
    leaves the fingerprint as it was before ``eval.pool`` existed, so earlier caches stay valid)."""
    stats = [torch.as_tensor(v, dtype=torch.float64).flatten().tolist() for v in (mean, std)]
    transform = {"mean": stats[0], "std": stats[1], "image_size": image_size, "format": CACHE_FORMAT}
    if pool != "cls":
        transform["pool"] = pool
    text = json.dumps(transform)
    return hashlib.sha256(text.encode()).hexdigest()


def feature_cache_key(encoder: nn.Module, images: torch.Tensor | Split, mean, std, *, labels: torch.Tensor | None = None,
                      dataset_id: str = "", image_size: int | None = None, pool: str = "cls") -> dict[str, str]:
    """The three fingerprints that name a features file: ``{"encoder", "dataset", "transform"}``."""
    return {
        "encoder": encoder_fingerprint(encoder),
        "dataset": dataset_fingerprint(images, labels, dataset_id),
        "transform": transform_fingerprint(mean, std, image_size, pool),
    }


def cached_features(
    encoder: nn.Module,
    images: torch.Tensor | Split,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    *,
    cache_dir: str | Path | None,
    labels: torch.Tensor | None = None,
    dataset_id: str = "",
    image_size: int | None = None,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    progress: bool = True,
    shard: bool = False,
    pool: str = "cls",
) -> torch.Tensor:
    """:func:`extract_features`, reusing features saved under ``cache_dir`` by an earlier call.

    The file ``<cache_dir>/features-<encoder>-<dataset>-<transform>.safetensors`` is named by
    :func:`feature_cache_key` (16 hex digits of each fingerprint); its metadata holds the full
    fingerprints, which are compared before the features are reused. So a second protocol on
    the same encoder, data and transform loads the features instead of running the encoder,
    and any change of a weight, the data or the transform extracts afresh. Files are written
    atomically (temporary name, then rename), by rank 0 only; stale ones are left in place (delete
    the directory to reclaim the space: about N x D x 4 bytes each). ``cache_dir=None`` disables
    the cache. ``pool`` (:func:`extract_features`) is part of the transform's fingerprint.

    ``shard`` (several processes; every rank must call it, with the same arguments): rank 0 alone
    touches ``cache_dir``. It looks the file up and tells the others (sending them the features on a
    hit), so all ranks take the same branch; on a miss every rank extracts its share
    (:func:`extract_features` with ``shard=True``) and rank 0 writes the gathered features. No rank
    ever reads a file another is writing, and the directory need not be shared between machines.

    Returns:
        float32 [N, D] on the CPU, as :func:`extract_features` (on every rank when sharded).
    """
    if cache_dir is None:
        return extract_features(encoder, images, mean, std, batch_size=batch_size, device=device,
                                image_size=image_size, progress=progress, shard=shard, pool=pool)
    _check_input(images)
    together = shard and world_size() > 1
    path = key = features = None
    if rank() == 0 or not together:
        key = feature_cache_key(encoder, images, mean, std, labels=labels, dataset_id=dataset_id,
                                image_size=image_size, pool=pool)
        path = _cache_path(Path(cache_dir), key)
        features = _load_cached(path, key, len(images))
    if together:
        features = broadcast_tensor(features)  # rank 0's hit (or miss) is every rank's
    if features is not None:
        return features
    features = extract_features(encoder, images, mean, std, batch_size=batch_size, device=device,
                                image_size=image_size, progress=progress, shard=shard, pool=pool)
    if rank() == 0:  # one writer; a rank extracting on its own (not sharded) just does not cache
        _save_cached(path, features, key, dataset_id)
    return features


def _cache_path(cache_dir: Path, key: dict[str, str]) -> Path:
    name = "-".join(key[k][:16] for k in ("encoder", "dataset", "transform"))
    return cache_dir / f"features-{name}.safetensors"


def _load_cached(path: Path, key: dict[str, str], num_rows: int) -> torch.Tensor | None:
    """The features [num_rows, D] saved at ``path`` under ``key``, or ``None`` (no file, another key,
    another length, or a corrupt or foreign file: extract again and overwrite it)."""
    if not path.is_file():
        return None
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            features = f.get_tensor("features") if metadata.get("key") == json.dumps(key, sort_keys=True) else None
    except Exception:
        return None
    return features if features is not None and features.shape[0] == num_rows else None


def _save_cached(path: Path, features: torch.Tensor, key: dict[str, str], dataset_id: str) -> None:
    """Write ``features`` [N, D] to ``path`` atomically (umask permissions); a folder that cannot be
    written (read-only, another user's) only warns: the features are extracted again next time."""
    def write(tmp: Path) -> None:
        safetensors.torch.save_file({"features": features.contiguous()}, str(tmp),
                                    metadata={"key": json.dumps(key, sort_keys=True), "dataset_id": dataset_id})

    try:
        atomic_write(path, write)
    except PathError as err:
        warnings.warn(f"{err}; features not cached", stacklevel=2)
