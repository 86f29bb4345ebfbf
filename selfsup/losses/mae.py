"""MAE's reconstruction loss and the patch <-> image maps it is defined on.

He, Chen, Xie, Li, Dollár, Girshick, "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022
(arXiv:2111.06377), sec. 3 "Reconstruction target": the decoder predicts the pixels of every patch; the
loss is the mean squared error between prediction and original pixels, computed on masked patches only,
optionally against per-patch normalised pixels (each patch's mean and standard deviation), which the
paper finds improves the representation (table 1c).
"""
from __future__ import annotations

import torch
from torch import Tensor

from selfsup.losses.arguments import check_scalar

__all__ = ["patchify", "unpatchify", "mae_loss"]


def patchify(images: Tensor, patch: int | tuple[int, int]) -> Tensor:
    """Images ``[B, C, H, W]`` -> patches ``[B, N, p_h * p_w * C]``, ``N = (H / p_h)(W / p_w)`` row-major over
    the grid (the ViT's token order); within a patch the pixels run row, column, then channel (MAE's layout).

    Raises:
        ValueError: ``H`` or ``W`` is not a multiple of the patch side.
    """
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    b, c, h, w = images.shape
    if h % ph or w % pw:
        raise ValueError(f"patchify: {h}x{w} images do not split into {ph}x{pw} patches")
    x = images.reshape(b, c, h // ph, ph, w // pw, pw)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // ph) * (w // pw), ph * pw * c)


def unpatchify(patches: Tensor, patch: int | tuple[int, int], grid: tuple[int, int], channels: int) -> Tensor:
    """The inverse of :func:`patchify`: ``[B, N, p_h * p_w * C]`` with ``N = grid_h * grid_w`` -> ``[B, C, H, W]``."""
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    gh, gw = grid
    b = patches.shape[0]
    x = patches.reshape(b, gh, gw, ph, pw, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, gh * ph, gw * pw)


def mae_loss(pred: Tensor, target: Tensor, mask: Tensor, norm_pix: bool = True, eps: float = 1e-6) -> Tensor:
    """MAE's loss: mean over masked patches of the per-patch mean squared error.

    ``L = sum_i m_i ||pred_i - t_i||^2 / d / sum_i m_i`` over every patch ``i`` of the batch, with ``t_i`` the
    patch's pixels, or with ``norm_pix`` its normalised pixels ``(x - mean(x)) / sqrt(var(x) + eps)`` (the
    unbiased variance over the patch's ``d`` values, as the paper's code). Patches with ``m_i = 0`` (visible)
    do not enter: neither their predictions nor their targets change the loss.

    Args:
        pred: [B, N, d] the decoder's predictions for every patch.
        target: [B, N, d] the image's patches (:func:`patchify`); no gradient is taken through them.
        mask: [B, N] bool or 0/1, 1 = masked (the patches the loss is computed on).
        norm_pix: normalise each target patch by its own mean and standard deviation.
        eps: added to the variance (>= 0).
    Returns:
        scalar loss (fp32 under autocast).
    """
    check_scalar("mae_loss", "eps", eps, allow_zero=True)
    target = target.detach().float()
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + eps).sqrt()
    per_patch = (pred.float() - target).pow(2).mean(dim=-1)  # [B, N]
    weight = mask.to(per_patch.dtype)
    return (per_patch * weight).sum() / weight.sum().clamp(min=1.0)
