"""The multiclass hinge loss (selfsup.losses.classification) against Crammer & Singer 2001, one sample
and one wrong class at a time."""
import pytest
import torch

from selfsup.losses import multiclass_hinge

pytestmark = pytest.mark.usefixtures("one_thread")


def slow_crammer_singer(scores: torch.Tensor, target: torch.Tensor, margin: float) -> float:
    """Crammer & Singer 2001, eq. (13), one sample and one wrong class at a time."""
    total = 0.0
    for s, y in zip(scores.tolist(), target.tolist()):
        worst = max(s[j] for j in range(len(s)) if j != y)
        total += max(0.0, margin + worst - s[y])
    return total / len(scores)


@pytest.mark.parametrize("margin", [0.0, 0.5, 1.0, 3.0])
def test_multiclass_hinge_matches_slow_loop(margin):
    g = torch.Generator().manual_seed(int(margin * 10))
    scores = torch.randn(17, 6, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, 6, (17,), generator=g)
    scores[0] = 0.0  # ties: every wrong class is the worst one
    loss = multiclass_hinge(scores, target, margin)
    assert loss.item() == pytest.approx(slow_crammer_singer(scores, target, margin), abs=1e-12)


def test_multiclass_hinge_gradient_reaches_true_and_worst_class_only():
    scores = torch.tensor([[2.0, 1.5, -1.0], [5.0, 0.0, 0.0]], requires_grad=True)
    multiclass_hinge(scores, torch.tensor([0, 0]), margin=1.0).backward()
    # sample 0 violates the margin through class 1; sample 1 is satisfied (no gradient)
    torch.testing.assert_close(scores.grad, torch.tensor([[-0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="K >= 2"):
        multiclass_hinge(torch.zeros(3, 1), torch.zeros(3, dtype=torch.int64))


def test_hinge_loss_is_the_multiclass_svm_formula():
    scores = torch.tensor([[2.0, 1.5, -1.0], [0.0, 3.0, 2.5], [1.0, 1.0, 4.0]])
    y = torch.tensor([0, 1, 0])
    # Crammer-Singer: max(0, 1 + max_{j != y} s_j - s_y) per sample, then the mean.
    expected = (max(0.0, 1 + 1.5 - 2.0) + max(0.0, 1 + 2.5 - 3.0) + max(0.0, 1 + 4.0 - 1.0)) / 3
    assert multiclass_hinge(scores, y).item() == pytest.approx(expected)
