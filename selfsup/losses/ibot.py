"""iBOT's masked-image-modelling loss: self-distillation on masked patch tokens.

Zhou, Wei, Wang, Shen, Xie, Yuille, Kong, "iBOT: Image BERT Pre-Training with Online Tokenizer",
ICLR 2022 (arXiv:2111.07832), sec. 3.2, eq. 2:

    L_MIM = - sum_i m_i * P_t^patch(u_i)^T log P_s^patch(u_hat_i)

The student sees the masked view ``u_hat`` (masked patches replaced by a learned mask token), the teacher
(the online tokenizer) the same view unmasked; ``m_i`` marks the masked patches. As in the paper's code,
each image's sum over its masked patches is divided by their count (an image with none contributes 0),
then images are averaged and so are the global views.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.losses.arguments import check_scalar

__all__ = ["ibot_patch_loss"]


def ibot_patch_loss(
    student_patch_logits: list[Tensor],
    teacher_patch_probs: list[Tensor],
    masks: list[Tensor],
    student_temp: float,
) -> Tensor:
    """iBOT's masked patch self-distillation cross-entropy (Zhou et al. 2022, eq. 2).

    For every view ``v``, image ``b`` and masked patch ``i`` (``masks[v][b, i]``), the cross-entropy
    ``H(q, p) = -sum_k q_k log p_k`` between the teacher's target ``q = teacher_patch_probs[v][b, i]`` and the
    student's ``p = softmax(student_patch_logits[v][b, i] / student_temp)``; averaged over the masked patches
    of each image (0 for an image with none), then over images and views.

    Args:
        student_patch_logits: V tensors ``[B, N, K]``: the student head's raw outputs on the patch tokens of
            each masked global view (N patches, K prototypes).
        teacher_patch_probs: V tensors ``[B, N, K]``: the teacher's targets on the same views unmasked, rows
            summing to 1 (centred and sharpened, ``softmax((t - c) / tau_t)``, or Sinkhorn-Knopp codes as in
            DINOv2); detached here. Only the rows at masked positions are read.
        masks: V bool tensors ``[B, N]``: True = the patch was masked in the student's input.
        student_temp: tau_s (0.1 in the paper).

    Returns:
        Scalar (fp32, or fp64 for fp64 inputs).
    Raises:
        ConfigError: ``student_temp`` is not a finite number > 0.

    Example::

        loss = ibot_patch_loss([s1, s2], [q1, q2], [m1, m2], student_temp=0.1)
    """
    check_scalar("ibot_patch_loss", "student_temp", student_temp)
    if not len(student_patch_logits) == len(teacher_patch_probs) == len(masks) > 0:
        raise ValueError(f"ibot_patch_loss: got {len(student_patch_logits)} student, {len(teacher_patch_probs)} "
                         f"teacher and {len(masks)} mask tensors; one of each per view, at least one view")
    total = None
    for s, q, m in zip(student_patch_logits, teacher_patch_probs, masks):
        s = s.to(torch.promote_types(s.dtype, torch.float32))
        log_p = F.log_softmax(s / student_temp, dim=-1)  # [B, N, K]
        ce = -(q.detach().to(log_p.dtype) * log_p).sum(-1)  # [B, N]
        weight = m.to(log_p.dtype)
        per_image = (ce * weight).sum(-1) / weight.sum(-1).clamp_min(1.0)  # [B]
        total = per_image.mean() if total is None else total + per_image.mean()
    return total / len(masks)
