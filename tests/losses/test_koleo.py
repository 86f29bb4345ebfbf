"""The KoLeo regulariser (selfsup.losses.koleo; Sablayrolles et al. 2019, DINOv2 arXiv:2304.07193 sec. 4)
against a brute-force nearest-neighbour loop: -1/n sum_i log(min_{j != i} ||x_i - x_j|| + eps), unit rows."""
import math

import pytest
import torch

from selfsup.core.errors import ConfigError
from selfsup.losses.koleo import koleo_loss


def reference(features, eps=1e-8):
    rows = [[v / max(math.sqrt(sum(u * u for u in row)), 1e-8) for v in row] for row in features.tolist()]
    total = 0.0
    for i, a in enumerate(rows):
        nearest = min(math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b))) for j, b in enumerate(rows) if j != i)
        total += -math.log(nearest + eps)
    return total / len(rows)


@pytest.mark.parametrize("n,d", [(2, 3), (9, 4), (16, 8)])
def test_matches_brute_force_nearest_neighbours(n, d):
    x = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(n)) * 3
    assert koleo_loss(x).item() == pytest.approx(reference(x), abs=1e-5, rel=1e-5)


def test_gradient_spreads_the_closest_pair_and_duplicates_stay_finite():
    x = torch.tensor([[1.0, 0.0], [0.99, 0.14], [-1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    koleo_loss(x).backward()
    step = x.detach() - 0.01 * x.grad
    assert koleo_loss(step).item() < koleo_loss(x.detach()).item()
    dup = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]])
    assert torch.isfinite(koleo_loss(dup)) and koleo_loss(dup).item() > 10


def test_bad_arguments_fail_in_one_line():
    with pytest.raises(ValueError, match=r"n >= 2, got shape \(1, 3\)"):
        koleo_loss(torch.randn(1, 3))
    with pytest.raises(ConfigError, match=r"^koleo_loss: eps must be a finite number > 0, got -1.0$"):
        koleo_loss(torch.randn(4, 3), eps=-1.0)
