"""SwAV's swapped prediction loss.

Caron, Misra, Mairal, Goyal, Bojanowski, Joulin, "Unsupervised Learning of Visual Features by
Contrasting Cluster Assignments", NeurIPS 2020 (arXiv:2006.09882), eq. 1-2 and Algorithm 1: the
code ``q_s`` of one view (Sinkhorn-Knopp, :func:`~selfsup.losses.sinkhorn_knopp`) is predicted from
every other view ``t`` through ``p_t = softmax(z_t . C / tau)``, with the cross-entropy
``l(z_t, q_s) = -sum_k q_s^(k) log p_t^(k)``. With multi-crop the codes come from the two global
views only, and each is predicted by all the other views (sec. 3.2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.losses.arguments import check_scalar

__all__ = ["swav_loss"]


def _fp32(x: Tensor) -> Tensor:
    """At least fp32 (bf16/fp16 under autocast are promoted; fp64 stays fp64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def swav_loss(scores: list[Tensor], codes: list[Tensor], temperature: float = 0.1) -> Tensor:
    """Swapped prediction: the mean over code views ``s`` and other views ``t != s`` of ``l(z_t, q_s)``.

    Algorithm 1 of the paper for two views (``-0.5 * mean(q_t * log p_s + q_s * log p_t)``), and its
    multi-crop form: each code view's loss is averaged over the ``V - 1`` views that predict it, then
    over the code views; every term is a mean over the batch.

    Args:
        scores: V tensors ``[B, K]``: every view's prototype scores ``z . C`` (L2-normalised
            embeddings against L2-normalised prototypes), the code views first, in ``codes``' order.
        codes: T tensors ``[B, K]``: the codes of views ``0 .. T - 1`` (rows summing to 1; treated as
            targets, no gradient flows into them).
        temperature: tau of the prediction softmax (0.1 in the paper).
    Returns:
        Scalar: the mean over the ``T * V - min(T, V)`` pairs of distinct views (fp32 under autocast).
    Raises:
        ConfigError: ``temperature`` is not a finite number > 0.
        ValueError: no pair of distinct views, or mismatched shapes.

    Example::

        codes = [sinkhorn_knopp(s.detach(), gather=True) for s in scores[:2]]
        loss = swav_loss(scores, codes, temperature=0.1)
    """
    check_scalar("swav_loss", "temperature", temperature)
    num_codes, num_views = len(codes), len(scores)
    pairs = num_codes * num_views - min(num_codes, num_views)
    if pairs == 0:
        raise ValueError(f"swav_loss needs a pair of distinct views, got {num_codes} code and {num_views} score views")
    if any(s.shape != scores[0].shape for s in scores) or any(q.shape != scores[0].shape for q in codes):
        raise ValueError(f"swav_loss: every score and code tensor must be [B, K] alike, got "
                         f"{[tuple(s.shape) for s in scores]} and {[tuple(q.shape) for q in codes]}")
    log_p = F.log_softmax(torch.stack([_fp32(s) for s in scores]) / temperature, dim=-1)  # [V, B, K]
    q = torch.stack([_fp32(c.detach()) for c in codes]).to(log_p.dtype)  # [T, B, K]
    with torch.autocast(log_p.device.type, enabled=False):  # the contraction in fp32 too, not autocast's bf16
        ce = -torch.einsum("sbk,tbk->st", q, log_p) / q.shape[1]  # [T, V]: batch-mean cross-entropy per pair
    same = torch.eye(num_codes, num_views, dtype=torch.bool, device=ce.device)
    return ce.masked_fill(same, 0.0).sum() / pairs
