"""Classification losses for the supervised baselines and the linear probe: the multiclass SVM hinge."""
from __future__ import annotations

import torch
from torch import Tensor

from selfsup.core.errors import ConfigError
from selfsup.losses.arguments import check_scalar

__all__ = ["multiclass_hinge"]

HINGE_FORMS = ("weston_watkins", "crammer_singer")


def multiclass_hinge(scores: Tensor, target: Tensor, margin: float = 1.0, form: str = "weston_watkins") -> Tensor:
    """Multiclass SVM hinge loss, mean over samples; ``form`` picks how the wrong classes are combined.

    - ``weston_watkins`` (default; Weston & Watkins, "Support Vector Machines for Multi-Class Pattern
      Recognition", ESANN 1999; the multiclass SVM loss of CS231n's notes): every wrong class that comes
      within ``margin`` of the true class pays,

          loss_i = sum_{j != y_i} max(0, s_ij - s_i,y_i + margin);

    - ``crammer_singer`` (Crammer & Singer, "On the Algorithmic Implementation of Multiclass Kernel-based
      Vector Machines", JMLR 2001, eq. 13): only the most-violating wrong class pays,

          loss_i = max(0, margin + max_{j != y_i} s_ij - s_i,y_i).

    Example: scores (cat 3.2, car 5.1, frog -1.7), true class cat: 2.9 in both forms; scores
    (2.2, 2.5, -3.1) with the third class true: 6.3 + 6.6 = 12.9 (Weston-Watkins), 6.6 (Crammer-Singer).
    (torch's ``MultiMarginLoss`` is the Weston-Watkins sum divided by K.)

    Args:
        scores: [B, K] class scores (logits), K >= 2.
        target: int64 [B], class indices in [0, K).
        margin: required gap (>= 0) between the true class and every other class.
        form: ``weston_watkins`` or ``crammer_singer``.

    Returns:
        Scalar: the mean of loss_i over the B samples.
    """
    check_scalar("multiclass_hinge", "margin", margin, allow_zero=True)
    if form not in HINGE_FORMS:
        raise ConfigError(f"multiclass_hinge: form must be one of {', '.join(HINGE_FORMS)}, got {form!r}")
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be [B, K] with K >= 2, got {list(scores.shape)}")
    true = scores.gather(1, target[:, None])  # [B, 1]
    is_true = torch.nn.functional.one_hot(target, scores.shape[1]).bool()
    if form == "crammer_singer":
        wrong = scores.masked_fill(is_true, float("-inf"))
        return (margin + wrong.amax(dim=1, keepdim=True) - true).clamp_min(0).mean()
    return (scores - true + margin).clamp_min(0).masked_fill(is_true, 0.0).sum(dim=1).mean()
