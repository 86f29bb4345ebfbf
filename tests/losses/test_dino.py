"""The DINO loss and teacher entropy (selfsup.losses.dino) against loops written from Algorithm 1 of
Caron et al. 2021 (arXiv:2104.14294)."""
import math

import pytest
import torch

from selfsup.losses.dino import dino_loss, teacher_entropy


# ----------------------------------------------------------------------------- references


def softmax_row(row: list[float], temp: float) -> list[float]:
    top = max(x / temp for x in row)
    e = [math.exp(x / temp - top) for x in row]
    return [x / sum(e) for x in e]


def h_reference(t: torch.Tensor, s: torch.Tensor, c: torch.Tensor, tps: float, tpt: float) -> float:
    """Algorithm 1's H(t, s): -(softmax((t - C)/tpt) * log softmax(s/tps)).sum(1).mean(), as loops."""
    total = 0.0
    for b in range(t.shape[0]):
        p_t = softmax_row([float(t[b, k] - c[k]) for k in range(t.shape[1])], tpt)
        p_s = softmax_row([float(x) for x in s[b]], tps)
        total += -sum(p_t[k] * math.log(p_s[k]) for k in range(t.shape[1]))
    return total / t.shape[0]


def dino_reference(students, teachers, c, tps, tpt) -> float:
    """Multi-crop DINO: mean of H over (teacher global crop i, student crop j) with i != j."""
    terms = [h_reference(t, s, c, tps, tpt) for i, t in enumerate(teachers) for j, s in enumerate(students) if i != j]
    return sum(terms) / len(terms)


def random_logits(n, b, k, gen):
    return [torch.randn(b, k, generator=gen, dtype=torch.float64) * 3 for _ in range(n)]


# ----------------------------------------------------------------------------- loss


@pytest.mark.parametrize("num_t,num_s,b,k,tps,tpt", [(2, 2, 3, 5, 0.1, 0.04), (2, 5, 4, 7, 0.1, 0.07), (1, 3, 2, 4, 0.5, 0.2)])
def test_dino_loss_matches_algorithm_1(num_t, num_s, b, k, tps, tpt):
    gen = torch.Generator().manual_seed(num_s * k)
    students, teachers = random_logits(num_s, b, k, gen), random_logits(num_t, b, k, gen)
    center = torch.randn(1, k, generator=gen, dtype=torch.float64)
    got = dino_loss(students, teachers, center, tps, tpt)
    want = dino_reference(students, teachers, center[0], tps, tpt)
    assert got.dtype == torch.float64
    assert abs(float(got) - want) < 1e-5 * max(1.0, abs(want))


def test_dino_loss_skips_same_index_pairs_and_does_not_train_the_teacher():
    gen = torch.Generator().manual_seed(1)
    students, teachers = random_logits(3, 4, 6, gen), random_logits(1, 4, 6, gen)
    center = torch.zeros(6, dtype=torch.float64)
    base = dino_loss(students, teachers, center, 0.1, 0.04)
    moved = [students[0] + 5 * torch.randn(4, 6, generator=gen, dtype=torch.float64)] + students[1:]
    assert torch.equal(dino_loss(moved, teachers, center, 0.1, 0.04), base)  # (0, 0) is no pair
    # identical student and teacher crops: only the cross pairs remain, so a same-index term would show
    same = [teachers[0].clone()] + students[1:]
    assert abs(float(dino_loss(same, teachers, center, 0.1, 0.04)) - float(base)) < 1e-12
    with pytest.raises(ValueError):
        dino_loss(students[:1], teachers, center, 0.1, 0.04)
    t = teachers[0].clone().requires_grad_()
    s = [x.clone().requires_grad_() for x in students]
    dino_loss(s, [t], center, 0.1, 0.04).backward()
    assert t.grad is None and s[0].grad.abs().sum() == 0 and s[1].grad.abs().sum() > 0


def test_teacher_entropy_matches_its_definition():
    gen = torch.Generator().manual_seed(2)
    teachers, center = random_logits(2, 3, 5, gen), torch.randn(5, generator=gen, dtype=torch.float64)
    want = 0.0
    for t in teachers:
        for row in t:
            p = softmax_row([float(row[k] - center[k]) for k in range(5)], 0.07)
            want -= sum(x * math.log(x) for x in p)
    assert abs(float(teacher_entropy(teachers, center, 0.07)) - want / 6) < 1e-9
