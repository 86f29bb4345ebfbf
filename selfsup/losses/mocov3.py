"""MoCo v3's symmetric contrastive loss: in-batch keys from the momentum encoder, no queue.

Chen, Xie, He, "An Empirical Study of Training Self-Supervised Vision Transformers", ICCV 2021
(arXiv:2104.02057), sec. 3 and Algorithm 1::

    ctr(q, k) = CrossEntropy(q k^T / t, labels = the positive's index) * 2t
    loss = ctr(q1, k2) + ctr(q2, k1)

with q and k L2-normalised, the keys of the whole (global) batch as candidates, each query's positive the
key of its own image's other view. The 2t factor makes the gradient's scale insensitive to t (the paper's
footnote); the two directions are summed, as the paper's pseudo-code and code do (not averaged).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.core.distributed import gather_no_grad, rank
from selfsup.losses.arguments import check_scalar

__all__ = ["mocov3_loss"]


def _ctr(q: torch.Tensor, k: torch.Tensor, temperature: float, gather: bool) -> torch.Tensor:
    """``2t * CE(q k_all^T / t)`` for queries [n, D] against keys [n, D] (gathered from every process)."""
    q = F.normalize(q, dim=1)
    k = F.normalize(k.detach(), dim=1)
    keys = gather_no_grad(k) if gather else k  # [n * processes, D]
    logits = q @ keys.to(q.dtype).T
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    offset = rank() * q.shape[0] if gather else 0
    labels = torch.arange(q.shape[0], device=q.device) + offset
    return F.cross_entropy(logits, labels) * (2 * temperature)


def mocov3_loss(q1: torch.Tensor, q2: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor, temperature: float = 0.2,
                *, gather: bool = False) -> torch.Tensor:
    """MoCo v3's loss ``ctr(q1, k2) + ctr(q2, k1)`` (Chen et al. 2021, Algorithm 1).

    ``ctr(q, k) = 2t * mean_i -log( exp(q_i . k_i / t) / sum_j exp(q_i . k_j / t) )`` over cosine similarities,
    ``j`` running over every key of the global batch.

    Args:
        q1, q2: [N, D] queries (predictor outputs) of views 1 and 2; row i of each is image i.
        k1, k2: [N, D] keys (momentum encoder's projections) of views 1 and 2; no gradient flows into them.
        temperature: t (0.2 for ViTs in the paper; 1.0 in the code's ResNet-50 setting).
        gather: keys from every process (no-grad all-gather, as the paper's ``concat_all_gather``), so P
            processes' losses average to the single-process loss on the global batch.
    Returns:
        scalar loss (fp32 under autocast).
    Raises:
        ConfigError: ``temperature`` is not a finite number > 0.
    """
    check_scalar("mocov3_loss", "temperature", temperature)
    return _ctr(q1, k2, temperature, gather) + _ctr(q2, k1, temperature, gather)
