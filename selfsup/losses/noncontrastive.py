"""Non-contrastive losses: no negatives; collapse is avoided by a predictor with a stop-gradient
(BYOL, SimSiam) or by statistics of the batch (Barlow Twins, VICReg).

Reductions follow LightlySSL's conventions (mean over samples; methods average the two
directions of an asymmetric loss). Batch statistics (means, standard deviations, correlations,
covariances) are taken over the *global* batch when ``gather=True``: the embeddings of every
process are concatenated with an autograd-correct all-gather first, so P processes on a split
batch compute the single-process loss of the whole batch. The statistics are computed in fp32
even under autocast (a D x D correlation in bf16 loses the small off-diagonal terms).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.core.distributed import gather_with_grad
from selfsup.losses.arguments import check_scalar

__all__ = [
    "byol_loss", "simsiam_loss", "barlow_twins_loss", "cross_correlation",
    "vicreg_loss", "vicreg_terms", "vicreg_variance", "vicreg_covariance",
]


def _fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _off_diagonal_squares(m: torch.Tensor) -> torch.Tensor:
    """Sum of the squared off-diagonal entries of a square matrix (no cancellation against the diagonal)."""
    return (m - torch.diag(torch.diagonal(m))).pow(2).sum()


def _cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of [N, D] tensors -> [N], in fp32."""
    return (F.normalize(_fp32(p), dim=1) * F.normalize(_fp32(z), dim=1)).sum(dim=1)


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's normalised MSE (Grill et al. 2020, "Bootstrap your own latent", eq. 2).

    ``|| p/|p| - z/|z| ||^2 = 2 - 2 cos(p, z)``, averaged over the batch. ``z`` is a target
    (the EMA network's projection of the other view): no gradient flows into it. The method
    symmetrises by averaging ``byol_loss(p1, z2')`` and ``byol_loss(p2, z1')``.

    Args:
        p: [N, D] online predictions q(z) of one view.
        z: [N, D] target projections z' of the other view.
    Returns:
        scalar in [0, 4].
    """
    return (2 - 2 * _cosine(p, z.detach())).mean()


def simsiam_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, stopgrad(z)) (Chen & He 2021, "Exploring simple Siamese representation
    learning", eq. 1 and 3): the negative cosine similarity, averaged over the batch.

    ``z`` is detached here (the stop-gradient is the paper's point, so it lives in the loss). The
    method symmetrises (eq. 4): ``L = D(p1, z2) / 2 + D(p2, z1) / 2``.

    Args:
        p: [N, D] predictions h(f(x1)).
        z: [N, D] projections f(x2) of the other view.
    Returns:
        scalar in [-1, 1].
    """
    return -_cosine(p, z.detach()).mean()


def _standardise(z: torch.Tensor, eps: float) -> torch.Tensor:
    """Zero mean, unit (biased) standard deviation along the batch: [N, D] -> [N, D]."""
    z = z - z.mean(dim=0)
    return z / torch.sqrt(z.pow(2).mean(dim=0) + eps)


def cross_correlation(z_a: torch.Tensor, z_b: torch.Tensor, *, gather: bool = False, eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins' cross-correlation matrix (Zbontar et al. 2021, eq. 2).

    ``C_ij = sum_b za_bi zb_bj / (sqrt(sum_b za_bi^2) sqrt(sum_b zb_bj^2))`` of the batch-centred
    embeddings, i.e. the Pearson correlation: standardise each dimension over the batch with the
    biased std (as the paper's BatchNorm, whose ``eps`` is added to the variance), then
    ``C = za^T zb / N``. With ``gather`` the batch is the global one.

    Args:
        z_a, z_b: [N, D] embeddings of the two views (row i of each from the same image).
    Returns:
        [D, D] fp32 matrix with entries in [-1, 1].
    """
    check_scalar("cross_correlation", "eps", eps, allow_zero=True)
    with torch.autocast(z_a.device.type, enabled=False):
        if gather:
            z_a, z_b = gather_with_grad(z_a), gather_with_grad(z_b)
        z_a, z_b = _standardise(_fp32(z_a), eps), _standardise(_fp32(z_b), eps)
        return z_a.T @ z_b / z_a.shape[0]


def barlow_twins_loss(
    z_a: torch.Tensor, z_b: torch.Tensor, lambd: float = 5e-3, *, gather: bool = False, eps: float = 1e-5
) -> torch.Tensor:
    """Barlow Twins' redundancy-reduction loss (Zbontar et al. 2021, eq. 1).

    ``L = sum_i (1 - C_ii)^2 + lambda sum_i sum_{j != i} C_ij^2`` with ``C`` the cross-correlation
    of the batch-standardised embeddings (:func:`cross_correlation`). It is 0 exactly when the
    two views' embeddings are identical, standardised and decorrelated. Symmetric in its inputs.

    Args:
        z_a, z_b: [N, D] projector outputs of the two views, N >= 2 (in total over processes).
        lambd: weight of the off-diagonal (redundancy) term; the paper's 5e-3.
        gather: standardise and correlate over the global batch (all processes).
        eps: added to the variance before the square root, as BatchNorm.
    Returns:
        scalar.
    """
    check_scalar("barlow_twins_loss", "lambd", lambd, allow_zero=True)
    c = cross_correlation(z_a, z_b, gather=gather, eps=eps)
    diag = torch.diagonal(c)
    on_diag = (1 - diag).pow(2).sum()
    return on_diag + lambd * _off_diagonal_squares(c)


def vicreg_variance(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg's variance term v(Z) (Bardes et al. 2022, eq. 1-2) for one branch.

    ``v(Z) = 1/d sum_j max(0, gamma - sqrt(Var(z^j) + eps))`` with the unbiased variance over the
    batch. Zero when every dimension's std is at least ``gamma``.

    Args:
        z: [N, D] embeddings (N >= 2).
    Returns:
        scalar.
    """
    check_scalar("vicreg_variance", "gamma", gamma, allow_zero=True)
    check_scalar("vicreg_variance", "eps", eps, allow_zero=True)
    std = torch.sqrt(_fp32(z).var(dim=0) + eps)
    return F.relu(gamma - std).mean()


def vicreg_covariance(z: torch.Tensor) -> torch.Tensor:
    """VICReg's covariance term c(Z) (Bardes et al. 2022, eq. 3-4) for one branch.

    ``C(Z) = 1/(n-1) sum_i (z_i - mean)(z_i - mean)^T`` and ``c(Z) = 1/d sum_{i != j} C_ij^2``.

    Args:
        z: [N, D] embeddings (N >= 2).
    Returns:
        scalar.
    """
    z = _fp32(z)
    z = z - z.mean(dim=0)
    cov = z.T @ z / (z.shape[0] - 1)
    return _off_diagonal_squares(cov) / z.shape[1]


def vicreg_terms(
    z_a: torch.Tensor, z_b: torch.Tensor, *, gamma: float = 1.0, eps: float = 1e-4, gather: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three unweighted VICReg terms (Bardes et al. 2022, eq. 5), as the authors' code
    reduces them (and LightlySSL, so numbers compare 1:1):

    - invariance ``s``: mean squared difference over samples *and* dimensions (``F.mse_loss``;
      the paper's eq. 5 sums over dimensions, its code and the published weights average);
    - variance: the mean of the two branches' :func:`vicreg_variance` (code; eq. 6 sums);
    - covariance: the sum of the two branches' :func:`vicreg_covariance` (code and eq. 6).

    Args:
        z_a, z_b: [N, D] expander outputs of the two views (row i of each from the same image).
        gather: compute all three terms over the global batch (all processes).
    Returns:
        (invariance, variance, covariance): three fp32 scalars.
    """
    with torch.autocast(z_a.device.type, enabled=False):
        if gather:
            z_a, z_b = gather_with_grad(z_a), gather_with_grad(z_b)
        z_a, z_b = _fp32(z_a), _fp32(z_b)
        invariance = F.mse_loss(z_a, z_b)
        variance = 0.5 * (vicreg_variance(z_a, gamma, eps) + vicreg_variance(z_b, gamma, eps))
        covariance = vicreg_covariance(z_a) + vicreg_covariance(z_b)
    return invariance, variance, covariance


def vicreg_loss(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    *,
    gamma: float = 1.0,
    eps: float = 1e-4,
    gather: bool = False,
) -> torch.Tensor:
    """VICReg: Variance-Invariance-Covariance Regularization (Bardes, Ponce, LeCun, ICLR 2022).

    Eq. 6 as the authors' code reduces it: ``L = lambda s(Z, Z') + mu [v(Z) + v(Z')] / 2 +
    nu [c(Z) + c(Z')]`` with ``s`` a mean over samples and dimensions (see :func:`vicreg_terms`),
    and the paper's weights lambda = mu = 25, nu = 1.

    Args:
        z_a, z_b: [N, D] expander outputs of the two views.
        sim_weight, var_weight, cov_weight: lambda, mu, nu.
        gamma: target standard deviation of every dimension; eps: inside the square root.
        gather: statistics over the global batch (all processes).
    Returns:
        scalar.
    """
    for name, value in (("sim_weight", sim_weight), ("var_weight", var_weight), ("cov_weight", cov_weight)):
        check_scalar("vicreg_loss", name, value, allow_zero=True)
    invariance, variance, covariance = vicreg_terms(z_a, z_b, gamma=gamma, eps=eps, gather=gather)
    return sim_weight * invariance + var_weight * variance + cov_weight * covariance
