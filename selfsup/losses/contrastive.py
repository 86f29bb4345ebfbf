"""Contrastive losses: negatives from the (global) batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.distributed import gather_with_grad, rank


def nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.5, *, gather: bool = False) -> torch.Tensor:
    """Normalized temperature-scaled cross entropy (SimCLR; Chen et al. 2020, eq. 1 and Alg. 1).

    For the 2N projections of N pairs, with cosine similarity ``s``:
    ``l(i, j) = -log exp(s_ij / t) / sum_{k != i} exp(s_ik / t)`` and the loss is the mean of
    ``l`` over all 2N anchors (both directions of every pair).

    Args:
        z_a, z_b: [N, D] projections of the two views; row i of each is a positive pair.
        temperature: t.
        gather: take the negatives from every process (autograd-correct all-gather), so the
            loss over P processes equals the single-process loss on the global batch.
    Returns:
        scalar loss.
    """
    n = z_a.shape[0]
    z_a, z_b = F.normalize(z_a, dim=1), F.normalize(z_b, dim=1)
    cand_a = gather_with_grad(z_a) if gather else z_a
    cand_b = gather_with_grad(z_b) if gather else z_b
    total = cand_a.shape[0]  # N * processes
    offset = rank() * n if gather else 0
    anchors = torch.cat([z_a, z_b])  # [2N, D]
    logits = anchors @ torch.cat([cand_a, cand_b]).T  # [2N, 2 * total]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature  # fp32 under autocast
    own = torch.arange(n, device=z_a.device) + offset
    self_index = torch.cat([own, own + total])
    positive = torch.cat([own + total, own])
    logits[torch.arange(2 * n, device=z_a.device), self_index] = float("-inf")
    return F.cross_entropy(logits, positive)
