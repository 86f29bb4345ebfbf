"""MoCo's InfoNCE over a queue (selfsup.losses.moco) against a slow reference from He et al. 2020, eq. 1."""
import math

import pytest
import torch

from selfsup.losses.moco import infonce


def cos(u: torch.Tensor, v: torch.Tensor) -> float:
    return float(u @ v / (u.norm() * v.norm()))


def infonce_reference(q, k, queue, t: float) -> float:
    """MoCo eq. 1 as a loop: -log exp(q.k+ / t) / (exp(q.k+ / t) + sum_j exp(q.k_j / t))."""
    total = 0.0
    for i in range(len(q)):
        pos = math.exp(cos(q[i], k[i]) / t)
        neg = sum(math.exp(cos(q[i], queue[j]) / t) for j in range(len(queue)))
        total += -math.log(pos / (pos + neg))
    return total / len(q)


@pytest.mark.parametrize("n,k,d,t", [(3, 5, 4, 0.2), (8, 17, 16, 0.07)])
def test_infonce_matches_the_paper(n, k, d, t):
    gen = torch.Generator().manual_seed(k)
    q, key, queue = (torch.randn(m, d, generator=gen, dtype=torch.float64) for m in (n, n, k))
    assert infonce(q, key, queue, t).item() == pytest.approx(infonce_reference(q, key, queue, t), rel=1e-5)
