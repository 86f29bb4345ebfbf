"""DCL / DCLW (selfsup.losses.decoupled) against a slow reference from Yeh et al. 2022."""
import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.losses.decoupled import dcl, dclw


def cos(u: torch.Tensor, v: torch.Tensor) -> float:
    return float(u @ v / (u.norm() * v.norm()))


def dcl_reference(z_a, z_b, t: float, sigma: float | None = None) -> float:
    """DCL, eq. 6 of Yeh et al. 2022, as loops: for view k of image i, positive z_i^(l),
    L = -w_i s(z_i^k, z_i^l) / t + log sum_{j != i, m in {1, 2}} exp(s(z_i^k, z_j^m) / t),
    averaged over i and k; w_i = 1 (DCL) or 2 - exp(s_ii / sigma) / mean_j exp(s_jj / sigma) (DCLW)."""
    n = len(z_a)
    views = (z_a, z_b)
    s_pos = [cos(z_a[i], z_b[i]) for i in range(n)]
    mean_e = sum(math.exp(s / sigma) for s in s_pos) / n if sigma else 1.0
    total = 0.0
    for k in range(2):
        for i in range(n):
            w = 2 - math.exp(s_pos[i] / sigma) / mean_e if sigma else 1.0
            neg = sum(math.exp(cos(views[k][i], views[m][j]) / t) for m in range(2) for j in range(n) if j != i)
            total += -w * s_pos[i] / t + math.log(neg)
    return total / (2 * n)


@pytest.mark.parametrize("n,d,t", [(2, 3, 0.5), (7, 16, 0.1), (5, 4, 1.0)])
def test_dcl_and_dclw_match_the_paper(n, d, t):
    gen = torch.Generator().manual_seed(n * d)
    z_a, z_b = (torch.randn(n, d, generator=gen, dtype=torch.float64) for _ in range(2))
    assert dcl(z_a, z_b, t).item() == pytest.approx(dcl_reference(z_a, z_b, t), rel=1e-5, abs=1e-6)
    for sigma in (0.5, 2.0):
        got = dclw(z_a, z_b, t, sigma).item()
        assert got == pytest.approx(dcl_reference(z_a, z_b, t, sigma), rel=1e-5, abs=1e-6)
    assert dcl(z_a, z_b, t).item() != pytest.approx(dclw(z_a, z_b, t, 0.5).item(), rel=1e-3)


def test_dcl_is_symmetric_scale_invariant_and_drops_the_positive():
    z_a, z_b = torch.randn(6, 4), torch.randn(6, 4)
    assert torch.allclose(dcl(z_a, z_b, 0.2), dcl(z_b, z_a, 0.2), atol=1e-6)
    assert torch.allclose(dclw(z_a, z_b, 0.2), dclw(3 * z_a, 0.5 * z_b, 0.2), atol=1e-5)
    # Without the positive in the denominator the loss can go below zero (NT-Xent cannot).
    z = torch.randn(8, 32)
    assert dcl(z, z, 0.1) < 0


def test_dclw_with_constant_positive_similarity_is_dcl():
    gen = torch.Generator().manual_seed(0)
    n, d, c = 6, 8, 0.3
    z_a = F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=1)
    u = torch.randn(n, d, generator=gen, dtype=torch.float64)
    u = F.normalize(u - (u * z_a).sum(1, keepdim=True) * z_a, dim=1)  # orthogonal to z_a
    z_b = (c * z_a + math.sqrt(1 - c * c) * u).requires_grad_()  # cos(z_a_i, z_b_i) = c for every i
    z_b2 = z_b.detach().clone().requires_grad_()
    plain, weighted = dcl(z_a, z_b, 0.2), dclw(z_a, z_b2, 0.2, 0.5)
    assert torch.allclose(plain, weighted, rtol=1e-12)
    plain.backward(), weighted.backward()
    assert torch.allclose(z_b.grad, z_b2.grad, atol=1e-12)
