"""I-JEPA's loss (selfsup.losses.ijepa) against a slow loop written from Assran et al. 2023 (arXiv:2301.08243),
eq. 1: 1/M sum_i D(s_hat_y(i), s_y(i)), D the mean squared L2 distance to the layer-normed targets."""
import math

import pytest
import torch

from selfsup.losses.ijepa import ijepa_loss


def layer_norm(v, eps=1e-5):
    mu = sum(v) / len(v)
    var = sum((x - mu) ** 2 for x in v) / len(v)
    return [(x - mu) / math.sqrt(var + eps) for x in v]


def reference(predictions, targets, normalize=True):
    blocks = []
    for pred, target in zip(predictions, targets):
        total, count = 0.0, 0
        for b in range(pred.shape[0]):
            for j in range(pred.shape[1]):
                t = target[b, j].tolist()
                t = layer_norm(t) if normalize else t
                total += sum((p - y) ** 2 for p, y in zip(pred[b, j].tolist(), t))
                count += len(t)
        blocks.append(total / count)
    return sum(blocks) / len(blocks)


@pytest.mark.parametrize("normalize", [True, False])
def test_matches_the_paper(normalize):
    gen = torch.Generator().manual_seed(0)
    sizes = [3, 5, 2, 4]  # blocks of different sizes
    preds = [torch.randn(2, n, 6, generator=gen, dtype=torch.float64) for n in sizes]
    targets = [torch.randn(2, n, 6, generator=gen, dtype=torch.float64) * 4 + 1 for n in sizes]
    got = ijepa_loss(preds, targets, normalize_targets=normalize)
    assert got.item() == pytest.approx(reference(preds, targets, normalize), abs=1e-5, rel=1e-5)


def test_targets_get_no_gradient_and_perfect_predictions_give_zero():
    target = torch.randn(2, 3, 8, requires_grad=True)
    pred = torch.nn.functional.layer_norm(target.detach(), (8,)).requires_grad_()
    loss = ijepa_loss([pred], [target])
    assert loss.item() == pytest.approx(0.0, abs=1e-10)
    (loss + ijepa_loss([pred * 2], [target])).backward()
    assert target.grad is None and pred.grad is not None


def test_bad_arguments_fail_in_one_line():
    with pytest.raises(ValueError, match=r"prediction \(2, 3, 4\) and target \(2, 2, 4\) differ"):
        ijepa_loss([torch.zeros(2, 3, 4)], [torch.zeros(2, 2, 4)])
    with pytest.raises(ValueError, match="one of each per block"):
        ijepa_loss([], [])
