"""MoCo's InfoNCE: positives from the momentum key encoder, negatives from a queue of old keys.

He, Fan, Wu, Xie, Girshick, "Momentum Contrast for Unsupervised Visual Representation Learning",
CVPR 2020 (arXiv:1911.05722), eq. 1 and Algorithm 1; MoCo v2: Chen, Fan, Girshick, He, "Improved
Baselines with Momentum Contrastive Learning", 2020 (arXiv:2003.04297).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.losses.arguments import check_scalar

__all__ = ["infonce"]


def infonce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """InfoNCE of MoCo (eq. 1): ``L_i = -log exp(q_i.k_i / t) / (exp(q_i.k_i / t) + sum_j exp(q_i.n_j / t))``.

    Every vector is L2-normalised first (the queue normally holds normalised keys already). No
    gradient is stopped here: MoCo passes keys computed under ``no_grad``.

    Args:
        q: [N, D] queries (the query encoder's projections).
        k: [N, D] keys; row i is the positive of query i.
        queue: [K, D] negatives shared by every query (keys of earlier batches).
        temperature: t (0.2 in MoCo v2, 0.07 in MoCo v1).
    Returns:
        scalar loss, the mean over the N queries (fp32 under autocast).
    Raises:
        ConfigError: ``temperature`` is not a finite number > 0.
    """
    check_scalar("infonce", "temperature", temperature)
    q, k, queue = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(queue, dim=1)
    positive = (q * k).sum(dim=1, keepdim=True)  # [N, 1]
    negative = q @ queue.to(q.dtype).T  # [N, K]
    logits = torch.cat([positive, negative], dim=1)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)  # the positive is column 0
    return F.cross_entropy(logits, target)
