"""NT-Xent (selfsup.losses.contrastive) against a slow reference written from SimCLR's Algorithm 1."""
import math

import pytest
import torch

from selfsup.losses import nt_xent


def nt_xent_reference(z_a: torch.Tensor, z_b: torch.Tensor, t: float) -> torch.Tensor:
    """SimCLR, Algorithm 1, written as loops: z_{2k-1}, z_{2k} are the two views of image k."""
    z = []
    for k in range(len(z_a)):
        z += [z_a[k], z_b[k]]
    n2 = len(z)

    def sim(u, v):
        return float(u @ v / (u.norm() * v.norm()))

    def l(i, j):
        numerator = math.exp(sim(z[i], z[j]) / t)
        denominator = sum(math.exp(sim(z[i], z[k]) / t) for k in range(n2) if k != i)
        return -math.log(numerator / denominator)

    return torch.tensor(sum(l(2 * k, 2 * k + 1) + l(2 * k + 1, 2 * k) for k in range(n2 // 2)) / n2, dtype=torch.float64)


@pytest.mark.parametrize("n,d,t", [(2, 3, 0.5), (8, 16, 0.1), (5, 7, 1.0)])
def test_nt_xent_matches_the_paper(n, d, t):
    gen = torch.Generator().manual_seed(n * d)
    z_a, z_b = torch.randn(n, d, generator=gen, dtype=torch.float64), torch.randn(n, d, generator=gen, dtype=torch.float64)
    got = nt_xent(z_a, z_b, t)
    assert torch.allclose(got.double(), nt_xent_reference(z_a, z_b, t), rtol=1e-5, atol=1e-6)


def test_nt_xent_is_symmetric_and_scale_invariant():
    z_a, z_b = torch.randn(6, 4), torch.randn(6, 4)
    assert torch.allclose(nt_xent(z_a, z_b, 0.2), nt_xent(z_b, z_a, 0.2), atol=1e-6)
    assert torch.allclose(nt_xent(z_a, z_b, 0.2), nt_xent(3 * z_a, 0.5 * z_b, 0.2), atol=1e-5)


def test_nt_xent_rewards_aligned_pairs():
    z = torch.randn(16, 32)
    assert nt_xent(z, z + 0.01 * torch.randn_like(z), 0.1) < nt_xent(z, torch.randn_like(z), 0.1)
