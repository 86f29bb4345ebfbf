"""Patch masks for masked-image methods, batched and on the device, from an explicit generator.

Three generators over a ``grid_h x grid_w`` patch grid (patch ``i * grid_w + j`` is row ``i``, column ``j``):

- :func:`random_mask`: MAE's per-sample uniform masking (He et al. 2022, arXiv:2111.06377, sec. 3): each
  image hides the same number of patches, ``N - int(N (1 - ratio))``, at random positions.
- :func:`block_mask`: BEiT's block-wise masking (Bao et al. 2022, arXiv:2106.08254, Algorithm 1), also
  iBOT's (Zhou et al. 2022, arXiv:2111.07832): rectangles of random area and aspect ratio are added until
  about ``ratio * N`` patches are hidden.
- :func:`multiblock_masks`: I-JEPA's (Assran et al. 2023, arXiv:2301.08243, sec. 3): ``K`` target blocks of
  random scale and aspect ratio, one context block with the target patches removed.

Randomness: like :mod:`selfsup.data.augment`, every draw comes from the ``torch.Generator`` passed in, on
the masks' device, so a fixed seed gives the same masks. A method seeds it with :func:`mask_seed` from
(run seed, step, micro-batch) and draws for the *global* batch, keeping its process's rows
(:func:`process_rows`): the masks are then a function of (seed, step, process), a resumed run masks as
an uninterrupted one, processes mask their images differently, and P processes mask exactly as one
process does on the global batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from selfsup.core.errors import ConfigError

__all__ = ["mask_seed", "process_rows", "random_mask", "visible_indices", "block_mask", "MultiBlockMasks",
           "multiblock_masks"]


def mask_seed(seed: int, step: int, micro: int = 0) -> int:
    """A distinct 63-bit seed for every (run seed, step, micro-batch), as the view maker's seeds are made."""
    state = np.random.SeedSequence([int(seed), int(step), int(micro), 0x6D61736B]).generate_state(2, np.uint32)
    return int(state.view(np.uint64)[0] >> 1)


def process_rows(batch: int, process: int, processes: int) -> slice:
    """This process's rows of the masks drawn for the global batch (``processes * batch`` rows, rank order)."""
    return slice(process * batch, (process + 1) * batch)


def _check_ratio(name: str, ratio: float, low_open: bool = False) -> None:
    if not (0 < ratio < 1 if low_open else 0 <= ratio < 1):
        raise ConfigError(f"{name}: the mask ratio must lie in {'(0' if low_open else '[0'}, 1), got {ratio}")


def random_mask(batch: int, num_patches: int, ratio: float, generator: torch.Generator) -> Tensor:
    """MAE's random masking: bool ``[B, N]``, True = masked, exactly ``N - int(N * (1 - ratio))`` per row.

    Each row ranks its patches by uniform noise and keeps the lowest ``int(N (1 - ratio))`` (He et al. 2022,
    sec. 3, "random sampling"; the same count as the paper's code, so a 75% ratio keeps 49 of 196 patches).
    """
    _check_ratio("random_mask", ratio)
    keep = int(num_patches * (1 - ratio))
    if keep < 1:
        raise ConfigError(f"random_mask: a {ratio} mask ratio over {num_patches} patches keeps none; lower it")
    noise = torch.rand(batch, num_patches, generator=generator, device=generator.device)
    kept = noise.argsort(dim=1)[:, :keep]
    mask = torch.ones(batch, num_patches, dtype=torch.bool, device=generator.device)
    return mask.scatter_(1, kept, False)


def visible_indices(mask: Tensor, num_visible: int) -> Tensor:
    """The indices of the unmasked patches of each row, ascending: long ``[B, num_visible]``.

    ``mask``: bool ``[B, N]`` (True = masked) with ``num_visible`` False entries in every row (no host sync).
    """
    return mask.to(torch.uint8).sort(dim=1, stable=True).indices[:, :num_visible].sort(dim=1).values


def _log_uniform(shape, low: float, high: float, generator: torch.Generator) -> Tensor:
    u = torch.rand(shape, generator=generator, device=generator.device)
    return torch.exp(math.log(low) + u * (math.log(high) - math.log(low)))


def _rectangles(top: Tensor, left: Tensor, height: Tensor, width: Tensor, grid_h: int, grid_w: int) -> Tensor:
    """Bool ``[..., grid_h * grid_w]``: rows ``[top, top + height)`` x columns ``[left, left + width)`` (broadcast)."""
    rows = torch.arange(grid_h, device=top.device)
    cols = torch.arange(grid_w, device=top.device)
    in_rows = (rows >= top[..., None]) & (rows < (top + height)[..., None])  # [..., grid_h]
    in_cols = (cols >= left[..., None]) & (cols < (left + width)[..., None])  # [..., grid_w]
    return (in_rows[..., :, None] & in_cols[..., None, :]).flatten(-2)


def block_mask(batch: int, grid: tuple[int, int], ratio: float | Tensor, generator: torch.Generator, *,
               min_block: int | None = None, aspect: tuple[float, float] = (0.3, 1 / 0.3), attempts: int = 10,
               check_every: int = 8) -> Tensor:
    """BEiT's block-wise masking (Bao et al. 2022, Algorithm 1): bool ``[B, grid_h * grid_w]``, True = masked.

    Per image, with target ``T = round(ratio * N)`` and ``M`` the patches masked so far, repeat: draw a block
    area ``s ~ U(min_block, T - |M|)`` and aspect ``r`` log-uniform in ``aspect``; the block is
    ``round(sqrt(s r)) x round(sqrt(s / r))`` patches at a uniform position; accept it if it fits inside the
    grid and adds between 1 and ``T - |M|`` new patches (so ``|M| <= T``). An image stops at ``T`` or after
    ``attempts`` rejected blocks in a row (the BEiT code's rule), so it may end a little below ``T``.

    ``ratio``: a float, or a ``[B]`` tensor of per-image ratios (iBOT draws one per image from [0.1, 0.5]).
    ``min_block``: the smallest block in patches; None scales BEiT's 16 of 196 to the grid (at least 1).
    All images draw in parallel (one round = one candidate block per unfinished image); the host checks
    whether any is unfinished every ``check_every`` rounds (one synchronisation each).
    """
    grid_h, grid_w = grid
    n = grid_h * grid_w
    device = generator.device
    if isinstance(ratio, Tensor):
        if bool(((ratio < 0) | (ratio >= 1)).any()):
            raise ConfigError(f"block_mask: mask ratios must lie in [0, 1), got {ratio.tolist()}")
    else:
        _check_ratio("block_mask", ratio)
    ratios = torch.as_tensor(ratio, dtype=torch.float32, device=device).expand(batch)
    if not 0 < aspect[0] <= aspect[1]:
        raise ConfigError(f"block_mask: aspect must be [low, high] with 0 < low <= high, got {aspect}")
    low = max(1, round(16 / 196 * n)) if min_block is None else int(min_block)
    target = (ratios * n).round()
    mask = torch.zeros(batch, n, dtype=torch.bool, device=device)
    count = torch.zeros(batch, device=device)
    fails = torch.zeros(batch, dtype=torch.long, device=device)
    for round_ in range(attempts * (n + 1)):  # every round masks a patch more or counts a failure
        if round_ % check_every == 0 and not bool(((count < target) & (fails < attempts)).any()):
            break
        active = (count < target) & (fails < attempts)
        remaining = target - count
        area = low + torch.rand(batch, generator=generator, device=device) * (remaining - low)
        r = _log_uniform(batch, aspect[0], aspect[1], generator)
        height, width = (area * r).sqrt().round(), (area / r).sqrt().round()
        fits = (height >= 1) & (width >= 1) & (height < grid_h) & (width < grid_w)
        u = torch.rand(2, batch, generator=generator, device=device)
        top = (u[0] * (grid_h - height + 1)).floor().clamp(min=0)
        left = (u[1] * (grid_w - width + 1)).floor().clamp(min=0)
        block = _rectangles(top, left, height, width, grid_h, grid_w)
        new = (block & ~mask).sum(dim=1)
        accept = active & fits & (new > 0) & (new <= remaining)
        mask |= block & accept[:, None]
        count += new * accept
        fails = torch.where(accept, 0, fails + active.long())
    return mask


@dataclass
class MultiBlockMasks:
    """I-JEPA's masks for a batch: ``context`` bool ``[B, N]`` (True = a patch the context encoder sees) and
    ``targets`` bool ``[B, K, N]`` (True = a patch of target block k; each block holds the same number of
    patches in every image, ``target_sizes[k]``)."""

    context: Tensor
    targets: Tensor
    target_sizes: Tensor  # long [K]: patches per target block (one block size per batch, as the paper's code)


def _block_size(scale: tuple[float, float], aspect: tuple[float, float], grid_h: int, grid_w: int,
                generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One block's (height, width) in patches, as 0-d tensors: area ``s N`` with ``s ~ U(scale)``, aspect
    ``r ~ U(aspect)``; ``h = round(sqrt(s N r))``, ``w = round(sqrt(s N / r))``, at least 1 and at most the grid."""
    u = torch.rand(2, generator=generator, device=generator.device)
    area = (scale[0] + u[0] * (scale[1] - scale[0])) * grid_h * grid_w
    r = aspect[0] + u[1] * (aspect[1] - aspect[0])
    height = (area * r).sqrt().round().clamp(1, grid_h)
    width = (area / r).sqrt().round().clamp(1, grid_w)
    return height, width


def _placed(batch: int, height: Tensor, width: Tensor, grid_h: int, grid_w: int,
            generator: torch.Generator) -> Tensor:
    """A ``height x width`` block at a uniform position in each image: bool ``[B, N]``."""
    u = torch.rand(2, batch, generator=generator, device=generator.device)
    top = (u[0] * (grid_h - height + 1)).floor()
    left = (u[1] * (grid_w - width + 1)).floor()
    return _rectangles(top, left, height.expand(batch), width.expand(batch), grid_h, grid_w)


def multiblock_masks(batch: int, grid: tuple[int, int], generator: torch.Generator, *, num_targets: int = 4,
                     target_scale: tuple[float, float] = (0.15, 0.2), target_aspect: tuple[float, float] = (0.75, 1.5),
                     context_scale: tuple[float, float] = (0.85, 1.0),
                     context_aspect: tuple[float, float] = (1.0, 1.0)) -> MultiBlockMasks:
    """I-JEPA's multi-block masking (Assran et al. 2023, sec. 3 and appendix C), defaults the paper's.

    ``num_targets`` target blocks, each of scale ``U(target_scale)`` of the image and aspect ratio
    ``U(target_aspect)``; one context block of scale ``U(context_scale)`` and aspect ``U(context_aspect)``
    (unit in the paper), from which every target patch is removed, so the context never shows a target. As in
    the paper's code, the block sizes are drawn once per batch (every image's block k has the same size, so
    target tokens stack into tensors) and each image places its blocks at its own uniform positions; targets
    may overlap each other. The context's size varies per image (a method gathering it to equal length
    truncates to the batch's smallest, as the paper's code does). No host synchronisation.
    """
    grid_h, grid_w = grid
    for name, pair in (("target_scale", target_scale), ("context_scale", context_scale)):
        if not 0 < pair[0] <= pair[1] <= 1:
            raise ConfigError(f"multiblock_masks: {name} must be [low, high] with 0 < low <= high <= 1, got {pair}")
    for name, pair in (("target_aspect", target_aspect), ("context_aspect", context_aspect)):
        if not 0 < pair[0] <= pair[1]:
            raise ConfigError(f"multiblock_masks: {name} must be [low, high] with 0 < low <= high, got {pair}")
    if num_targets < 1:
        raise ConfigError(f"multiblock_masks: num_targets must be >= 1, got {num_targets}")
    sizes = [_block_size(target_scale, target_aspect, grid_h, grid_w, generator) for _ in range(num_targets)]
    targets = torch.stack([_placed(batch, h, w, grid_h, grid_w, generator) for h, w in sizes], dim=1)
    h, w = _block_size(context_scale, context_aspect, grid_h, grid_w, generator)
    context = _placed(batch, h, w, grid_h, grid_w, generator) & ~targets.any(dim=1)
    target_sizes = torch.stack([(h * w).long() for h, w in sizes])
    return MultiBlockMasks(context=context, targets=targets, target_sizes=target_sizes)
