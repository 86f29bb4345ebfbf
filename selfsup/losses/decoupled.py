"""Decoupled contrastive losses: DCL and DCLW.

Yeh, Hong, Hsu, Liu, Chen, LeCun, "Decoupled Contrastive Learning", ECCV 2022
(arXiv:2110.06848). NT-Xent with the positive pair removed from the denominator (eq. 6), which
removes the negative-positive coupling of the gradient; DCLW also weights the positive term with
a negative von Mises-Fisher weight.

The denominator is one sum over both views of every other image (the paper's eq. 6 and the
authors' code), not two separate log-sums as in LightlySSL's ``DCLLoss``; so these values compare
1:1 with the paper, not with LightlySSL's. The reduction is LightlySSL's: the mean over the 2N
anchors, i.e. the average of the two directions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.core.distributed import gather_with_grad, rank
from selfsup.losses.arguments import check_scalar
from selfsup.losses.contrastive import pair_logits

__all__ = ["dcl", "dclw"]


def _decoupled(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float, sigma: float | None, gather: bool) -> torch.Tensor:
    """Shared body of :func:`dcl` (``sigma=None``) and :func:`dclw`."""
    n = z_a.shape[0]
    logits, self_index, positive_index = pair_logits(z_a, z_b, temperature, gather)
    rows = torch.arange(2 * n, device=logits.device)
    positive = logits[rows, positive_index]  # [2N]: s_ii / t, the same for both directions
    if sigma is not None:
        positive = positive * _vmf_weights(z_a, z_b, sigma, gather).repeat(2)
    # Decoupling: neither the anchor itself nor its positive is in the denominator.
    excluded = torch.zeros_like(logits, dtype=torch.bool)
    excluded[rows, self_index] = True
    excluded[rows, positive_index] = True
    negatives = torch.logsumexp(logits.masked_fill(excluded, float("-inf")), dim=1)  # [2N]
    return (negatives - positive).mean()


def _vmf_weights(z_a: torch.Tensor, z_b: torch.Tensor, sigma: float, gather: bool) -> torch.Tensor:
    """Negative von Mises-Fisher weights ``w_i = 2 - M softmax_i(<z_i^a, z_i^b> / sigma)`` over the M
    positives of the (global) batch (DCL's DCLW weighting); projections [N, D] -> this process's [N].

    The weights stay in the graph, as in the authors' code (LightlySSL detaches them).
    """
    cos = (F.normalize(z_a, dim=1) * F.normalize(z_b, dim=1)).sum(dim=1)
    cos = cos.to(torch.promote_types(cos.dtype, torch.float32))
    all_cos = gather_with_grad(cos) if gather else cos
    weights = 2 - all_cos.shape[0] * torch.softmax(all_cos / sigma, dim=0)
    offset = rank() * z_a.shape[0] if gather else 0
    return weights[offset : offset + z_a.shape[0]]


def dcl(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.1, *, gather: bool = False) -> torch.Tensor:
    """Decoupled contrastive loss (DCL; Yeh et al. 2022, eq. 6).

    With cosine similarity ``s``, for the anchor ``z_i^(k)`` of view k and its positive ``z_i^(l)``:
    ``L_i^(k) = -s(z_i^(k), z_i^(l)) / t + log sum_{j != i, m in {a, b}} exp(s(z_i^(k), z_j^(m)) / t)``;
    the loss is the mean over both views of every image (the average of the two directions).

    Args:
        z_a, z_b: [N, D] projections of the two views; row i of each is a positive pair.
        temperature: t.
        gather: take the negatives from every process (autograd-correct all-gather), so the
            loss over P processes equals the single-process loss on the global batch.
    Returns:
        scalar loss (fp32 under autocast).
    Raises:
        ConfigError: ``temperature`` is not a finite number > 0.
    """
    check_scalar("dcl", "temperature", temperature)
    return _decoupled(z_a, z_b, temperature, None, gather)


def dclw(
    z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.1, sigma: float = 0.5, *, gather: bool = False
) -> torch.Tensor:
    """Weighted decoupled contrastive loss (DCLW; Yeh et al. 2022, eq. 6 with the negative von Mises-Fisher weight).

    As :func:`dcl` with the positive term ``-s_ii / t`` multiplied by
    ``w_i = 2 - exp(s_ii / sigma) / mean_j exp(s_jj / sigma) = 2 - M softmax_i(s_ii / sigma)``, the
    mean over the M positive pairs of the global batch (mean weight 1; harder positives, with a
    lower similarity, weigh more). Constant positive similarities give ``w = 1``, i.e. :func:`dcl`.

    Args:
        z_a, z_b: [N, D] projections of the two views; row i of each is a positive pair.
        temperature: t.
        sigma: scale of the von Mises-Fisher weighting (0.5 in the paper).
        gather: negatives and the weights' normaliser from every process.
    Returns:
        scalar loss (fp32 under autocast).
    Raises:
        ConfigError: ``temperature`` or ``sigma`` is not a finite number > 0.
    """
    check_scalar("dclw", "temperature", temperature)
    check_scalar("dclw", "sigma", sigma)
    return _decoupled(z_a, z_b, temperature, sigma, gather)
