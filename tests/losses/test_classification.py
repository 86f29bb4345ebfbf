"""The multiclass SVM hinge (selfsup.losses.classification) in both forms against slow loops written from the
papers (Weston & Watkins 1999: sum over the wrong classes, the default; Crammer & Singer 2001: the worst one),
one sample and one wrong class at a time, and the worked examples of the seed notes."""
import pytest
import torch

from selfsup.core.errors import ConfigError
from selfsup.losses import multiclass_hinge

pytestmark = pytest.mark.usefixtures("one_thread")


def slow_weston_watkins(scores: torch.Tensor, target: torch.Tensor, margin: float) -> float:
    """Weston & Watkins 1999: L_i = sum_{j != y_i} max(0, s_j - s_{y_i} + margin); mean over samples."""
    total = 0.0
    for s, y in zip(scores.tolist(), target.tolist()):
        total += sum(max(0.0, s[j] - s[y] + margin) for j in range(len(s)) if j != y)
    return total / len(scores)


def slow_crammer_singer(scores: torch.Tensor, target: torch.Tensor, margin: float) -> float:
    """Crammer & Singer 2001, eq. (13), one sample and one wrong class at a time."""
    total = 0.0
    for s, y in zip(scores.tolist(), target.tolist()):
        worst = max(s[j] for j in range(len(s)) if j != y)
        total += max(0.0, margin + worst - s[y])
    return total / len(scores)


SLOW = {"weston_watkins": slow_weston_watkins, "crammer_singer": slow_crammer_singer}


@pytest.mark.parametrize("form", list(SLOW))
@pytest.mark.parametrize("margin", [0.0, 0.5, 1.0, 3.0])
def test_multiclass_hinge_matches_slow_loop(margin, form):
    g = torch.Generator().manual_seed(int(margin * 10))
    scores = torch.randn(17, 6, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, 6, (17,), generator=g)
    scores[0] = 0.0  # ties: every wrong class is the worst one
    loss = multiclass_hinge(scores, target, margin, form=form)
    assert loss.item() == pytest.approx(SLOW[form](scores, target, margin), abs=1e-12)


def test_the_default_form_is_weston_watkins():
    g = torch.Generator().manual_seed(3)
    scores, target = torch.randn(9, 5, generator=g, dtype=torch.float64) * 2, torch.randint(0, 5, (9,), generator=g)
    assert multiclass_hinge(scores, target) == multiclass_hinge(scores, target, 1.0, form="weston_watkins")
    assert multiclass_hinge(scores, target) > multiclass_hinge(scores, target, form="crammer_singer")


@pytest.mark.parametrize("scores, true, weston_watkins, crammer_singer", [
    ([3.2, 5.1, -1.7], 0, 2.9, 2.9),  # cat, car, frog; true cat: only car violates, both forms agree
    ([2.2, 2.5, -3.1], 2, 12.9, 6.6),  # third class true: 6.3 + 6.6 summed, or the worst 6.6
])
def test_worked_examples(scores, true, weston_watkins, crammer_singer):
    s, y = torch.tensor([scores], dtype=torch.float64), torch.tensor([true])
    assert multiclass_hinge(s, y).item() == pytest.approx(weston_watkins, abs=1e-12)
    assert multiclass_hinge(s, y, form="crammer_singer").item() == pytest.approx(crammer_singer, abs=1e-12)


def test_weston_watkins_gradient_reaches_every_violating_class():
    scores = torch.tensor([[2.0, 1.5, 1.2, -1.0], [5.0, 0.0, 0.0, 0.0]], requires_grad=True)
    multiclass_hinge(scores, torch.tensor([0, 0]), margin=1.0).backward()
    # sample 0: classes 1 and 2 violate the margin (class 3 does not): +1/2 each, -2/2 at the true class
    torch.testing.assert_close(scores.grad, torch.tensor([[-1.0, 0.5, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]]))


def test_crammer_singer_gradient_reaches_true_and_worst_class_only():
    scores = torch.tensor([[2.0, 1.5, -1.0], [5.0, 0.0, 0.0]], requires_grad=True)
    multiclass_hinge(scores, torch.tensor([0, 0]), margin=1.0, form="crammer_singer").backward()
    # sample 0 violates the margin through class 1; sample 1 is satisfied (no gradient)
    torch.testing.assert_close(scores.grad, torch.tensor([[-0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]))


def test_bad_inputs():
    with pytest.raises(ValueError, match="K >= 2"):
        multiclass_hinge(torch.zeros(3, 1), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ConfigError, match="form must be one of weston_watkins, crammer_singer, got 'max'"):
        multiclass_hinge(torch.zeros(3, 2), torch.zeros(3, dtype=torch.int64), form="max")
