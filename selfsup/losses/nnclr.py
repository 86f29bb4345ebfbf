"""NNCLR: the nearest neighbour in a support set as the positive of a contrastive loss.

Dwibedi, Aytar, Tompson, Sermanet, Zisserman, "With a Little Help from My Friends: Nearest-Neighbor
Contrastive Learning of Visual Representations", ICCV 2021 (arXiv:2104.14548), eq. 2 and sec. 3.3:

    L_i = -log exp(NN(z_i, Q) . p_i^+ / tau) / sum_k exp(NN(z_i, Q) . p_k^+ / tau)

with ``NN(z, Q)`` the element of the support set ``Q`` closest to ``z`` (every vector L2-normalised,
so the closest in Euclidean distance is the most cosine-similar), ``p^+`` the predictions of the other
view, and the paper's symmetric term ``-log exp(NN(z_i, Q) . p_i^+ / tau) / sum_k exp(NN(z_k, Q) . p_i^+ / tau)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.core.distributed import gather_no_grad, gather_with_grad, rank
from selfsup.losses.arguments import check_scalar

__all__ = ["nearest_neighbour", "nnclr_loss"]


@torch.no_grad()
def nearest_neighbour(z: Tensor, support: Tensor, filled: int | Tensor | None = None) -> Tensor:
    """``NN(z, Q)``: for every row of ``z`` the most cosine-similar row of ``support`` (NNCLR, eq. 2).

    Args:
        z: ``[B, D]`` query embeddings (any norm).
        support: ``[M, D]`` the support set ``Q`` (any norm).
        filled: only the first ``filled`` rows of ``support`` are candidates (an int or a 0-dim tensor, so a
            partly filled queue needs no host synchronisation); ``None``: all ``M``. With no candidate at
            all, each query is its own neighbour.
    Returns:
        ``[B, D]``: the neighbours, L2-normalised, in ``support``'s dtype promoted to at least fp32, no
        gradient. Ties go to the lowest row.
    """
    z = F.normalize(z.detach().to(torch.promote_types(z.dtype, torch.float32)), dim=1)
    support = F.normalize(support.detach().to(z.dtype), dim=1)
    similarity = z @ support.T  # [B, M]
    if filled is None:
        return support[similarity.argmax(dim=1)]
    filled = torch.as_tensor(filled, device=z.device)
    empty = torch.arange(support.shape[0], device=z.device) >= filled
    neighbours = support[similarity.masked_fill(empty, float("-inf")).argmax(dim=1)]
    return torch.where(filled > 0, neighbours, z)


def nnclr_loss(nn: Tensor, p: Tensor, temperature: float = 0.1, *, gather: bool = False) -> Tensor:
    """NNCLR's contrastive loss (eq. 2 with its symmetric term, sec. 3.3), the mean of its two directions.

    Logits ``s_ik = NN(z_i, Q) . p_k^+ / tau`` over the batch; the positive of ``i`` is ``k = i``. One
    direction is the cross-entropy of every row (the neighbour against every prediction), the other of
    every column (the prediction against every neighbour); each is a mean over the samples.

    Args:
        nn: ``[N, D]`` the neighbours ``NN(z_i, Q)`` of one view's projections (from
            :func:`nearest_neighbour`; no gradient flows into them).
        p: ``[N, D]`` the other view's predictions ``p_i^+``; row i is the positive of ``nn[i]``.
        temperature: tau (0.1 in the paper).
        gather: the candidates of every row and column come from every process (predictions by an
            autograd-correct all-gather), so the loss over P processes is the loss on the global batch.
    Returns:
        Scalar loss (fp32 under autocast).
    Raises:
        ConfigError: ``temperature`` is not a finite number > 0.
    """
    check_scalar("nnclr_loss", "temperature", temperature)
    n = p.shape[0]
    nn = F.normalize(nn.detach(), dim=1).to(p.dtype)
    p = F.normalize(p, dim=1)
    p_all = gather_with_grad(p) if gather else p
    nn_all = gather_no_grad(nn) if gather else nn
    target = torch.arange(n, device=p.device) + (rank() * n if gather else 0)
    wide = torch.promote_types(p.dtype, torch.float32)
    rows = (nn @ p_all.T).to(wide) / temperature  # [N, N_all]: neighbour i against every prediction
    cols = (p @ nn_all.T).to(wide) / temperature  # [N, N_all]: prediction i against every neighbour
    return 0.5 * (F.cross_entropy(rows, target) + F.cross_entropy(cols, target))
