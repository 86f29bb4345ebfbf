"""DINO's self-distillation loss (Caron et al., "Emerging Properties in Self-Supervised Vision
Transformers", ICCV 2021, arXiv:2104.14294; eq. 2-3 and Algorithm 1).

The teacher's outputs on the global crops are centred and sharpened into targets
``P_t(x) = softmax((g_t(x) - c) / tau_t)``; the student's outputs on every crop give
``P_s(x') = softmax(g_s(x') / tau_s)``; the loss is the cross-entropy ``H(P_t(x), P_s(x'))``
averaged over every (teacher global crop x, student crop x') pair with ``x' != x``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.losses.arguments import check_scalar

__all__ = ["dino_loss", "teacher_entropy"]


def _fp32(x: Tensor) -> Tensor:
    """At least fp32 (bf16/fp16 under autocast are promoted; fp64 stays fp64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _teacher_probs(teacher_logits: list[Tensor], center: Tensor, teacher_temp: float) -> Tensor:
    """Centred, sharpened teacher targets, detached, in fp32: ``[T, B, K]``."""
    t = torch.stack([_fp32(x.detach()) for x in teacher_logits])
    return F.softmax((t - _fp32(center.detach())) / teacher_temp, dim=-1)


def dino_loss(
    student_logits: list[Tensor],
    teacher_logits: list[Tensor],
    center: Tensor,
    student_temp: float,
    teacher_temp: float,
) -> Tensor:
    """DINO's cross-entropy between centred/sharpened teacher and student distributions.

    Caron et al. 2021, Algorithm 1 (``H(t, s) = -(softmax((t - C) / tpt) * log_softmax(s / tps)).sum(1).mean()``),
    summed over the pairs ``(i, j)`` with ``i != j`` and divided by the number of pairs.

    Args:
        student_logits: V tensors ``[B, K]``: the student head's raw outputs on every crop,
            the global crops first (in the teacher's order), then the local crops.
        teacher_logits: T tensors ``[B, K]``: the teacher head's raw outputs on the global crops
            only (centring and sharpening happen here; they are detached here too).
        center: ``[K]`` or ``[1, K]``: the running centre C of the teacher outputs.
        student_temp: tau_s (0.1 in the paper).
        teacher_temp: tau_t (0.04 -> 0.07 warm-up in the paper).

    Returns:
        Scalar: mean over the ``T * V - min(T, V)`` pairs with distinct indices and over the batch.
    Raises:
        ConfigError: a temperature is not a finite number > 0.
    """
    check_scalar("dino_loss", "student_temp", student_temp)
    check_scalar("dino_loss", "teacher_temp", teacher_temp)
    num_t, num_s = len(teacher_logits), len(student_logits)
    pairs = num_t * num_s - min(num_t, num_s)
    if pairs == 0:
        raise ValueError(f"dino_loss needs a pair of distinct crops, got {num_t} teacher and {num_s} student views")
    q = _teacher_probs(teacher_logits, center, teacher_temp)  # [T, B, K]
    log_p = F.log_softmax(torch.stack([_fp32(s) for s in student_logits]) / student_temp, dim=-1)  # [V, B, K]
    ce = -torch.einsum("tbk,vbk->tv", q.to(log_p.dtype), log_p) / q.shape[1]  # [T, V]: batch-mean cross-entropy per pair
    same = torch.eye(num_t, num_s, dtype=torch.bool, device=ce.device)
    return ce.masked_fill(same, 0.0).sum() / pairs


@torch.no_grad()
def teacher_entropy(teacher_logits: list[Tensor], center: Tensor, teacher_temp: float) -> Tensor:
    """Mean entropy (nats) of the teacher targets ``softmax((t - C) / tau_t)`` over crops and samples.

    Caron et al. 2021, sec. 5.3 / fig. 7: collapse shows as entropy 0 (one dimension dominates,
    too much sharpening) or ``log K`` (uniform output, too much centring).

    Args:
        teacher_logits: T tensors ``[B, K]``; center: ``[K]`` or ``[1, K]``.
    Returns:
        Scalar (detached).
    """
    check_scalar("teacher_entropy", "teacher_temp", teacher_temp)
    q = _teacher_probs(teacher_logits, center, teacher_temp)
    return -(q * torch.log(q.clamp_min(1e-30))).sum(-1).mean()
