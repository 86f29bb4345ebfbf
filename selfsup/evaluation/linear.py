"""Linear probe: a softmax classifier trained on frozen features.

The linear-evaluation protocol of self-supervised learning (e.g. Zhang et al. 2016,
"Colorful Image Colorization"; Chen et al. 2020, "A Simple Framework for Contrastive
Learning of Visual Representations", appendix B.5, which likewise fits an L2-regularised
multinomial logistic regression with L-BFGS on frozen features and picks the
regularisation on a held-out part of the training set). The objective is convex, so a
full-batch quasi-Newton solver (Liu & Nocedal 1989, "On the limited memory BFGS method for
large scale optimization") reaches the optimum in a few hundred iterations; no learning-rate
schedule or augmentation is involved, so results are deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.errors import SelfsupError
from selfsup.evaluation.knn import prepare_labelled_features, true_class_rank
from selfsup.progress import progress_bar

__all__ = ["linear_probe"]

Weights = tuple[torch.Tensor, torch.Tensor]  # (W [C, D], b [C])


def _standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Z-score both [N, D] / [M, D] sets with the per-dimension mean and std of ``train``.
    A constant dimension (std ~ 0) is only centred."""
    mean = train.mean(dim=0)
    std = train.std(dim=0, unbiased=False)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return (train - mean) / std, (test - mean) / std


def _stratified_split(
    labels: torch.Tensor, val_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices of ``labels`` [N] into (fit, val) with ``round(val_fraction * n_c)`` of
    every class c in val (always leaving at least one sample of the class in fit)."""
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    fit, val = [], []
    for c in torch.unique(labels):
        members = (labels == c).nonzero().squeeze(1)
        members = members[torch.randperm(members.numel(), generator=generator)]
        n_val = min(int(round(val_fraction * members.numel())), members.numel() - 1)
        val.append(members[:n_val])
        fit.append(members[n_val:])
    return torch.cat(fit).sort().values, torch.cat(val).sort().values


def _fit(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    init: Weights | None,
    max_iter: int,
) -> Weights:
    """Minimise ``mean_i CE(W x_i + b, y_i) + weight_decay / 2 * ||W||_F^2`` (bias not decayed).

    Args:
        x: float32 [N, D] standardised features. y: int64 [N] labels.
        init: warm start (W [C, D], b [C]); zeros when ``None``.
        max_iter: L-BFGS iterations (each costs about one pass over ``x``).

    Returns:
        (W [C, D], b [C]), detached.
    """
    if init is None:
        init = (x.new_zeros(num_classes, x.shape[1]), x.new_zeros(num_classes))
    weight, bias = (t.detach().clone().requires_grad_(True) for t in init)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, history_size=10, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=False)
        loss = F.cross_entropy(F.linear(x, weight, bias), y)
        if weight_decay > 0:
            loss = loss + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


@torch.no_grad()
def _accuracies(
    x: torch.Tensor, y: torch.Tensor, weights: Weights, chunk: int = 65536
) -> tuple[float, float]:
    """Top-1 and top-5 accuracy of the linear classifier ``weights`` on [N, D] / [N]."""
    ranks = torch.cat(
        [
            true_class_rank(F.linear(x[i : i + chunk], *weights), y[i : i + chunk])
            for i in range(0, x.shape[0], chunk)
        ]
    )
    return int((ranks < 1).sum()) / ranks.numel(), int((ranks < 5).sum()) / ranks.numel()


def _check_probe_args(weight_decays: Sequence[float], val_fraction: float, max_iter: int) -> list[float]:
    """Validate the hyper-parameters; return the distinct weight decays, largest first."""
    decays = sorted({float(wd) for wd in weight_decays}, reverse=True)
    if not decays or any(not math.isfinite(wd) or wd < 0 for wd in decays):
        raise SelfsupError(
            f"weight_decays must be a non-empty list of finite values >= 0, got {list(weight_decays)}"
        )
    if not 0 < val_fraction < 1:
        raise SelfsupError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    if max_iter < 1:
        raise SelfsupError(f"max_iter must be a positive integer, got {max_iter}")
    return decays


def linear_probe(
    train_features: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    test_features: torch.Tensor | np.ndarray,
    test_labels: torch.Tensor | np.ndarray,
    *,
    num_classes: int | None = None,
    weight_decays: Sequence[float] = (0.0, 1e-5, 1e-4, 1e-3, 1e-2),
    val_fraction: float = 0.1,
    seed: int = 0,
    max_iter: int = 200,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Linear-probe top-1 / top-5 accuracy with the weight decay chosen on training data only.

    1. Standardise features with the per-dimension mean/std of the training features.
    2. Hold out a stratified ``val_fraction`` of the *training* features (seeded by ``seed``);
       fit one classifier per weight decay on the rest, largest decay first, each warm-started
       from the previous solution (a regularisation path), and keep the decay with the best
       validation top-1 (ties go to the larger decay). The test set plays no part in this.
    3. Refit on all training features with that decay (warm-started from its validation fit)
       and report accuracy on the test features.

    The objective is ``mean CE + weight_decay / 2 * ||W||^2`` (bias not decayed), which is
    scikit-learn's ``LogisticRegression(C=1 / (weight_decay * N))``; full-batch L-BFGS with a
    strong-Wolfe line search, float32.

    Args:
        train_features: [N, D] floats. train_labels: [N] integers in [0, C).
        test_features: [M, D] floats. test_labels: [M] integers in [0, C).
        num_classes: C; default ``1 + the largest label`` seen.
        weight_decays: candidates for the L2 penalty (>= 0).
        val_fraction: share of each training class held out for choosing the decay.
        seed: seed of the held-out split.
        max_iter: L-BFGS iterations per fit.
        device: where to fit; default: the device of ``train_features``.
        progress: show a progress bar over the weight-decay sweep (plain lines when not a terminal).

    Returns:
        ``{"linear": {"top1", "top5", "weight_decay": chosen, "val_top1": its validation top-1}}``.
    """
    decays = _check_probe_args(weight_decays, val_fraction, max_iter)
    x_train, y_train, x_test, y_test, classes = prepare_labelled_features(
        train_features, train_labels, test_features, test_labels, num_classes
    )
    run_device = x_train.device if device is None else torch.device(device)
    x_train, x_test = _standardise(x_train.to(run_device), x_test.to(run_device))
    y_train, y_test = y_train.to(run_device), y_test.to(run_device)
    fit_idx, val_idx = _stratified_split(y_train, val_fraction, seed)
    if val_idx.numel() == 0:
        raise SelfsupError(
            f"val_fraction={val_fraction} of {y_train.numel()} training samples leaves no validation set"
        )
    fit_idx, val_idx = fit_idx.to(run_device), val_idx.to(run_device)
    x_fit, y_fit, x_val, y_val = x_train[fit_idx], y_train[fit_idx], x_train[val_idx], y_train[val_idx]

    best: tuple[float, float, Weights] | None = None  # (val top-1, decay, weights)
    weights: Weights | None = None
    bar = progress_bar(decays, desc="linear probe", unit="wd", disable=not progress)
    for wd in bar:
        weights = _fit(x_fit, y_fit, classes, wd, weights, max_iter)
        val_top1, _ = _accuracies(x_val, y_val, weights)
        bar.set_postfix(wd=wd, val_top1=f"{val_top1:.4f}")
        if best is None or val_top1 > best[0]:
            best = (val_top1, wd, weights)
    assert best is not None
    val_top1, chosen, weights = best
    weights = _fit(x_train, y_train, classes, chosen, weights, max_iter)
    top1, top5 = _accuracies(x_test, y_test, weights)
    return {"linear": {"top1": top1, "top5": top5, "weight_decay": chosen, "val_top1": val_top1}}
