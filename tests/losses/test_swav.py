"""SwAV's swapped prediction loss (selfsup.losses.swav) against loops written from eq. 1-2 and Algorithm 1 of
Caron et al. 2020 (arXiv:2006.09882)."""
import math

import pytest
import torch

from selfsup.core.errors import ConfigError
from selfsup.losses import sinkhorn_knopp, swav_loss


def log_softmax_row(row: list[float], tau: float) -> list[float]:
    top = max(x / tau for x in row)
    log_sum = top + math.log(sum(math.exp(x / tau - top) for x in row))
    return [x / tau - log_sum for x in row]


def l_reference(scores: torch.Tensor, codes: torch.Tensor, tau: float) -> float:
    """eq. 2: l(z_t, q_s) = -sum_k q_s^(k) log p_t^(k), p_t = softmax(z_t . c / tau), as a batch mean."""
    total = 0.0
    for b in range(scores.shape[0]):
        log_p = log_softmax_row([float(x) for x in scores[b]], tau)
        total -= sum(float(codes[b, k]) * log_p[k] for k in range(scores.shape[1]))
    return total / scores.shape[0]


def swav_reference(scores, codes, tau) -> float:
    """Multi-crop SwAV (sec. 3.2): each code view s predicted by every other view t, averaged."""
    per_code = [sum(l_reference(scores[t], q, tau) for t in range(len(scores)) if t != s) / (len(scores) - 1)
                for s, q in enumerate(codes)]
    return sum(per_code) / len(per_code)


def random_case(num_codes: int, num_views: int, b: int, k: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    scores = [torch.randn(b, k, generator=gen, dtype=torch.float64).clamp(-1, 1) for _ in range(num_views)]
    codes = [torch.softmax(torch.randn(b, k, generator=gen, dtype=torch.float64), dim=1) for _ in range(num_codes)]
    return scores, codes


@pytest.mark.parametrize("num_codes,num_views,b,k,tau", [(2, 2, 3, 5, 0.1), (2, 6, 4, 7, 0.1), (1, 3, 2, 4, 0.5)])
def test_swav_loss_matches_the_paper(num_codes, num_views, b, k, tau):
    scores, codes = random_case(num_codes, num_views, b, k, seed=num_views * k)
    got = swav_loss(scores, codes, tau)
    assert got.dtype == torch.float64
    assert abs(float(got) - swav_reference(scores, codes, tau)) < 1e-10


def test_two_views_are_algorithm_1():
    """Algorithm 1: loss = -0.5 * mean(q1 * log(p2) + q2 * log(p1)), the sum over prototypes inside."""
    scores, _ = random_case(0, 2, 6, 5, seed=1)
    codes = [sinkhorn_knopp(s, 0.05, 3) for s in scores]
    p1, p2 = (torch.log_softmax(s / 0.1, dim=1) for s in scores)
    want = -0.5 * ((codes[0] * p2).sum(1) + (codes[1] * p1).sum(1)).mean()
    torch.testing.assert_close(swav_loss(scores, codes, 0.1), want, rtol=1e-12, atol=0)


def test_codes_are_targets_and_a_view_never_predicts_its_own_code():
    scores, codes = random_case(1, 3, 4, 5, seed=2)
    scores = [s.clone().requires_grad_() for s in scores]
    codes = [codes[0].clone().requires_grad_()]
    swav_loss(scores, codes, 0.1).backward()
    assert codes[0].grad is None  # no gradient into the codes
    assert scores[0].grad.abs().sum() == 0 and scores[1].grad.abs().sum() > 0 and scores[2].grad.abs().sum() > 0


def test_fp32_under_autocast_and_bad_arguments():
    scores, codes = random_case(2, 2, 4, 5, seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = swav_loss([s.bfloat16() for s in scores], [q.float() for q in codes], 0.1)
    assert low.dtype == torch.float32
    with pytest.raises(ConfigError, match=r"^swav_loss: temperature must be a finite number > 0, got 0$"):
        swav_loss(scores, codes, 0)
    with pytest.raises(ValueError, match="pair of distinct views"):
        swav_loss(scores[:1], codes[:1], 0.1)
    with pytest.raises(ValueError, match=r"\[B, K\] alike"):
        swav_loss([scores[0], scores[1][:, :3]], codes, 0.1)
