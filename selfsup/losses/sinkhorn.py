"""Sinkhorn-Knopp: soft, equipartitioned assignments of a batch to K prototypes.

Caron, Misra, Mairal, Goyal, Bojanowski, Joulin, "Unsupervised Learning of Visual Features by
Contrasting Cluster Assignments" (SwAV), NeurIPS 2020 (arXiv:2006.09882), sec. 3.1, eq. 3-4 and
Algorithm 1 (``distributed_sinkhorn``); after Cuturi 2013, "Sinkhorn Distances" (arXiv:1306.0895).

The codes ``Q`` maximise ``Tr(Q^T C^T Z) + epsilon H(Q)`` over the transportation polytope
``{Q in R+^{K x B}: Q 1_B = 1_K / K, Q^T 1_K = 1_B / B}``: every prototype receives the same share
of the batch. The solution is ``Q* = Diag(u) exp(C^T Z / epsilon) Diag(v)``, whose scalings ``u, v``
come from a few alternating row / column normalisations. With several processes the batch is the
global one: every sum over samples is all-reduced inside the iterations, as the paper's Algorithm.
"""
from __future__ import annotations

import numbers

import torch
from torch import Tensor

from selfsup.core.distributed import all_reduce_mean, gather_no_grad, world_size
from selfsup.core.errors import ConfigError
from selfsup.losses.arguments import check_scalar

__all__ = ["sinkhorn_knopp"]


def _sum_over_processes(x: Tensor, gather: bool) -> Tensor:
    """``x`` summed over every process (``gather``), else ``x``; exact for 2 processes (halving is exact)."""
    return all_reduce_mean(x) * world_size() if gather else x


@torch.no_grad()
def sinkhorn_knopp(scores: Tensor, epsilon: float = 0.05, iterations: int = 3, *, gather: bool = False) -> Tensor:
    """Codes (soft assignments) of ``B`` samples to ``K`` prototypes by Sinkhorn-Knopp (SwAV, eq. 3-4, Alg. 1).

    ``P = exp(scores / epsilon)`` is scaled to total mass 1, then ``iterations`` times: every prototype's
    mass (sum over the batch) is set to ``1 / K``, then every sample's mass to ``1 / B``. The rows are
    finally rescaled to sum to 1. Each prototype's scores are first shifted by their maximum over the
    (global) batch: a constant factor per prototype, which the first prototype normalisation cancels
    exactly, so ``exp`` neither overflows nor leaves a prototype with no mass.

    Args:
        scores: ``[B, K]`` similarities of this process's samples to the prototypes (SwAV:
            ``z @ C^T`` of L2-normalised embeddings and prototypes). Not differentiated: codes are targets.
        epsilon: the entropic regularisation (0.05 in SwAV); smaller means harder assignments.
        iterations: Sinkhorn iterations (3 in SwAV).
        gather: the batch is every process's rows together (``B`` = the sum of their rows): the sums
            over samples, the total and the maximum are all-reduced, so P processes return what one
            process returns for the concatenated scores.
    Returns:
        ``[B, K]`` codes, each row summing to 1, in fp32 (fp64 for fp64 scores). After enough
        iterations every prototype's column sums to ``B / K`` over the (global) batch.
    Raises:
        ConfigError: ``epsilon`` is not a finite number > 0, or ``iterations`` is not an integer >= 1.

    Example::

        codes = sinkhorn_knopp(z @ prototypes.T, epsilon=0.05, iterations=3, gather=True)
    """
    check_scalar("sinkhorn_knopp", "epsilon", epsilon)
    if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral) or iterations < 1:
        raise ConfigError(f"sinkhorn_knopp: iterations must be an integer >= 1, got {iterations!r}")
    if scores.ndim != 2:
        raise ValueError(f"sinkhorn_knopp: scores must be [B, K], got shape {tuple(scores.shape)}")
    s = scores.detach().to(torch.promote_types(scores.dtype, torch.float32))
    top = s.max(dim=0, keepdim=True).values  # [1, K]: each prototype's best score in the batch ...
    if gather and world_size() > 1:
        top = gather_no_grad(top).max(dim=0, keepdim=True).values  # ... in the global batch
    q = torch.exp((s - top) / epsilon)  # [B, K]; the paper's Q is its transpose
    num_prototypes = q.shape[1]
    num_samples = _sum_over_processes(torch.tensor(float(q.shape[0]), dtype=q.dtype, device=q.device), gather)
    q /= _sum_over_processes(q.sum(), gather)
    for _ in range(iterations):
        q /= _sum_over_processes(q.sum(dim=0, keepdim=True), gather)  # each prototype's mass ...
        q /= num_prototypes  # ... is 1 / K
        q /= q.sum(dim=1, keepdim=True)  # each sample's mass ...
        q /= num_samples  # ... is 1 / B
    return q * num_samples  # rows sum to 1: an assignment per sample
