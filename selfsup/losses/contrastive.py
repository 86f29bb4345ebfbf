"""Contrastive losses: negatives from the (global) batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.core.distributed import gather_with_grad, rank
from selfsup.losses.arguments import check_scalar

__all__ = ["nt_xent"]


def nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.5, *, gather: bool = False) -> torch.Tensor:
    """Normalized temperature-scaled cross entropy (SimCLR; Chen et al. 2020, eq. 1 and Alg. 1).

    For the 2N projections of N pairs, with cosine similarity ``s``:
    ``l(i, j) = -log exp(s_ij / t) / sum_{k != i} exp(s_ik / t)`` and the loss is the mean of
    ``l`` over all 2N anchors (both directions of every pair).

    Args:
        z_a, z_b: [N, D] projections of the two views; row i of each is a positive pair.
        temperature: t > 0.
        gather: take the negatives from every process (autograd-correct all-gather), so the
            loss over P processes equals the single-process loss on the global batch.
    Returns:
        scalar loss.
    Raises:
        ConfigError: ``temperature`` is not a finite number > 0.
    """
    check_scalar("nt_xent", "temperature", temperature)
    logits, self_index, positive = pair_logits(z_a, z_b, temperature, gather)
    logits[torch.arange(logits.shape[0], device=logits.device), self_index] = float("-inf")
    return F.cross_entropy(logits, positive)


def pair_logits(
    z_a: torch.Tensor, z_b: torch.Tensor, temperature: float, gather: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cosine-similarity logits of every anchor against every candidate, shared by the contrastive losses.

    Args:
        z_a, z_b: [N, D] projections of the two views (not yet normalised); row i is a positive pair.
        temperature: the logits are ``s / temperature``, in fp32 even under autocast.
        gather: candidates from every process (autograd-correct all-gather); anchors stay local.
    Returns:
        logits [2N, 2M] (anchors ``[z_a; z_b]`` against candidates ``[all z_a; all z_b]``, M = N x
        processes), and for each anchor the column of itself [2N] and of its positive [2N].
    """
    n = z_a.shape[0]
    z_a, z_b = F.normalize(z_a, dim=1), F.normalize(z_b, dim=1)
    cand_a = gather_with_grad(z_a) if gather else z_a
    cand_b = gather_with_grad(z_b) if gather else z_b
    total = cand_a.shape[0]  # N * processes
    offset = rank() * n if gather else 0
    logits = torch.cat([z_a, z_b]) @ torch.cat([cand_a, cand_b]).T  # [2N, 2 * total]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    own = torch.arange(n, device=z_a.device) + offset
    return logits, torch.cat([own, own + total]), torch.cat([own + total, own])
