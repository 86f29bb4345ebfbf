"""Classification losses for the supervised baselines."""
from __future__ import annotations

import torch
from torch import Tensor

from selfsup.losses.arguments import check_scalar

__all__ = ["multiclass_hinge"]


def multiclass_hinge(scores: Tensor, target: Tensor, margin: float = 1.0) -> Tensor:
    """Crammer & Singer multiclass hinge loss, mean over samples.

    Crammer & Singer, "On the Algorithmic Implementation of Multiclass Kernel-based Vector
    Machines", JMLR 2001, eq. (13): each sample pays for its most-violating wrong class only,

        loss_i = max(0, margin + max_{j != y_i} s_ij - s_i,y_i)

    (Weston & Watkins 1999 would sum the hinge over all wrong classes instead; torch's
    ``MultiMarginLoss`` is that sum divided by K.)

    Args:
        scores: [B, K] class scores (logits), K >= 2.
        target: int64 [B], class indices in [0, K).
        margin: required gap (>= 0) between the true class and every other class.

    Returns:
        Scalar: the mean of loss_i over the B samples.
    """
    check_scalar("multiclass_hinge", "margin", margin, allow_zero=True)
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be [B, K] with K >= 2, got {list(scores.shape)}")
    true = scores.gather(1, target[:, None])  # [B, 1]
    wrong = scores.masked_fill(torch.nn.functional.one_hot(target, scores.shape[1]).bool(), float("-inf"))
    return (margin + wrong.amax(dim=1, keepdim=True) - true).clamp_min(0).mean()
