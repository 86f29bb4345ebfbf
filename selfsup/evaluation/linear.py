"""Linear probe: a linear classifier trained on frozen, standardised features.

The linear-evaluation protocol of self-supervised learning (Zhang et al. 2016, "Colorful Image
Colorization"; Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations", appendix B.5). Two losses:

- ``softmax``: multinomial logistic regression (cross-entropy), the default;
- ``hinge``: the multiclass SVM, :func:`selfsup.losses.multiclass_hinge` with margin 1, in the form
  ``hinge_form`` names: ``weston_watkins`` (default; Weston & Watkins 1999: the hinge summed over the
  wrong classes) or ``crammer_singer`` (JMLR 2001: the most-violating wrong class only); the linear
  SVM of Goyal et al. 2019 ("Scaling and Benchmarking Self-Supervised Visual Representation Learning").

Both minimise ``mean_i loss(W x_i + b, y_i) + weight_decay / 2 * ||W||_F^2`` (bias not decayed).

Two solvers:

- ``sgd`` (default): mini-batch SGD with Nesterov momentum and a cosine learning-rate decay.
  Every (learning rate, weight decay) pair of the grid is one head of a single wide linear
  layer, so the whole sweep costs one matrix product per batch instead of one per pair (as in
  the DINOv2 linear evaluation, Oquab et al. 2023, which trains its grid of linear heads
  concurrently on the same features).
- ``lbfgs``: full-batch L-BFGS with a strong-Wolfe line search (Liu & Nocedal 1989), softmax
  only; the line search sets the step, so only the weight decay is swept. It reaches the exact
  optimum of the convex objective (the same as scikit-learn's ``LogisticRegression``) but costs
  one pass over the data per iteration and weight decay, so it is slower on large sets.

The hyper-parameters are chosen on a stratified held-out part of the *training* features and
the chosen pair is refitted on all of them; the test features and labels reach only the final
scoring (:func:`select_hyperparameters` does not even receive them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.core.errors import SelfsupError
from selfsup.core.progress import progress_bar
from selfsup.evaluation.knn import prepare_labelled_features, true_class_rank

__all__ = ["linear_probe", "fit_linear_probe", "select_hyperparameters", "LinearProbe", "LOSSES", "SOLVERS"]

LOSSES = ("softmax", "hinge")
HINGE_FORMS = ("weston_watkins", "crammer_singer")
SOLVERS = ("sgd", "lbfgs")
DEFAULT_LEARNING_RATES = (0.01, 0.03, 0.1, 0.3, 1.0)
DEFAULT_WEIGHT_DECAYS = (0.0, 1e-4, 1e-3, 1e-2)

Weights = tuple[torch.Tensor, torch.Tensor]  # (W [C, D], b [C])


@dataclass
class LinearProbe:
    """A fitted probe: the classifier on standardised features plus how it was chosen.

    ``predict(x)`` maps raw features [M, D] to class indices [M].
    """

    weight: torch.Tensor  # [C, D], on standardised features
    bias: torch.Tensor  # [C]
    mean: torch.Tensor  # [D], standardisation taken from the training features
    std: torch.Tensor  # [D]
    loss: str
    solver: str
    weight_decay: float
    lr: float | None  # None for L-BFGS (its line search sets the step)
    val_top1: float  # top-1 of the chosen hyper-parameters on the held-out part of train
    sweep: list[dict] = field(default_factory=list)  # every candidate's {"lr", "weight_decay", "val_top1"}
    hinge_form: str | None = None  # the multiclass SVM's form when loss == "hinge"

    @torch.no_grad()
    def scores(self, features: torch.Tensor) -> torch.Tensor:
        x = (torch.as_tensor(features).float().to(self.weight.device) - self.mean) / self.std
        return F.linear(x, self.weight, self.bias)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.scores(features).argmax(dim=1)


def _standard_stats(train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std of ``train`` [N, D]; a constant dimension (std ~ 0) gets std 1."""
    mean = train.mean(dim=0)
    std = train.std(dim=0, unbiased=False)
    return mean, torch.where(std > 1e-8, std, torch.ones_like(std))


def _standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Z-score both [N, D] / [M, D] sets with the per-dimension mean and std of ``train``."""
    mean, std = _standard_stats(train)
    return (train - mean) / std, (test - mean) / std


def _stratified_split(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
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


# ----------------------------------------------------------------------------- L-BFGS


def _fit(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    init: Weights | None,
    max_iter: int,
) -> Weights:
    """L-BFGS: minimise ``mean_i CE(W x_i + b, y_i) + weight_decay / 2 * ||W||_F^2``.

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


# ----------------------------------------------------------------------------- SGD, many heads at once


def _score_gradient(scores: torch.Tensor, y: torch.Tensor, loss: str, hinge_form: str = "weston_watkins") -> torch.Tensor:
    """Gradient of ``sum_g mean_b loss(scores[b, g], y[b])`` with respect to ``scores`` [B, G, C].

    Written out instead of autograd (about 4x faster for these small [B, G, C] tensors; tested
    against autograd through ``F.cross_entropy`` and :func:`multiclass_hinge` in both forms):

    - softmax: ``(softmax(s) - onehot(y)) / B``;
    - hinge, Weston-Watkins (margin 1): ``+1 / B`` at every wrong class j with ``s_j - s_y + 1 > 0``
      and ``-(number of such j) / B`` at the true class;
    - hinge, Crammer-Singer (margin 1): for a sample whose loss is positive, ``+1 / B`` at its
      most-violating wrong class and ``-1 / B`` at its true class; 0 otherwise.
    """
    batch = scores.shape[0]
    target = y[:, None, None].expand(-1, scores.shape[1], 1)  # [B, G, 1]
    if loss == "hinge" and hinge_form == "weston_watkins":
        active = ((scores - scores.gather(2, target) + 1.0) > 0).to(scores.dtype).scatter_(2, target, 0.0) / batch
        return active.scatter_add_(2, target, -active.sum(dim=2, keepdim=True))
    if loss == "hinge":
        true = scores.gather(2, target)
        wrong = scores.scatter(2, target, float("-inf"))
        worst = wrong.argmax(dim=2, keepdim=True)
        active = ((1.0 + wrong.gather(2, worst) - true) > 0).to(scores.dtype) / batch
        grad = torch.zeros_like(scores).scatter_(2, worst, active)
        return grad.scatter_add_(2, target, -active)
    grad = (scores - scores.amax(dim=2, keepdim=True)).exp_()
    grad /= grad.sum(dim=2, keepdim=True)
    grad.scatter_add_(2, target, grad.new_full(target.shape, -1.0))
    return grad.div_(batch)


@torch.no_grad()
def _fit_heads(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    lrs: torch.Tensor,
    weight_decays: torch.Tensor,
    *,
    loss: str,
    steps: int,
    batch_size: int,
    momentum: float,
    seed: int,
    progress: bool = False,
    hinge_form: str = "weston_watkins",
) -> Weights:
    """Train G independent linear classifiers at once with mini-batch Nesterov SGD.

    Head g minimises ``mean loss + weight_decays[g] / 2 * ||W_g||^2`` with peak learning rate
    ``lrs[g]``, decayed by a cosine to 0 over ``steps`` updates of ``batch_size`` rows (passes
    over a reshuffled ``x``; the rows left over at the end of a pass wait for the next one's
    shuffle); all heads see the same batches (seeded by ``seed``). A fixed number of steps
    rather than epochs gives a small training set enough updates and bounds the cost on a large
    one. Heads are independent: a head that diverges ends with non-finite weights and leaves
    the others untouched.

    Args:
        x: float32 [N, D] standardised features. y: int64 [N] labels.
        lrs, weight_decays: float [G] each, one pair per head.

    Returns:
        (W [G, C, D], b [G, C]).
    """
    heads, dim, n = lrs.numel(), x.shape[1], x.shape[0]
    device = x.device
    weight = torch.zeros(heads * num_classes, dim, device=device)
    bias = torch.zeros(heads * num_classes, device=device)
    velocity = [torch.zeros_like(weight), torch.zeros_like(bias)]
    lr_rows = lrs.to(device, torch.float32).repeat_interleave(num_classes)  # [G*C]
    wd_rows = weight_decays.to(device, torch.float32).repeat_interleave(num_classes)[:, None]
    generator = torch.Generator().manual_seed(seed)
    batch_size = min(batch_size, n)
    order, start = torch.randperm(n, generator=generator).to(device), 0
    for step in progress_bar(range(steps), desc=f"linear probe ({heads} heads)", unit="step", disable=not progress):
        if start + batch_size > n:  # next pass over the data, freshly shuffled
            order, start = torch.randperm(n, generator=generator).to(device), 0
        idx = order[start : start + batch_size]
        start += batch_size
        xb, yb = x[idx], y[idx]
        scores = torch.addmm(bias, xb, weight.T).view(-1, heads, num_classes)  # [B, G, C]
        grad_scores = _score_gradient(scores, yb, loss, hinge_form).view(-1, heads * num_classes)
        grad_w = torch.addmm(wd_rows * weight, grad_scores.T, xb)  # + weight decay's gradient
        grad_b = grad_scores.sum(dim=0)
        scale = 0.5 * (1.0 + math.cos(math.pi * step / steps))
        for param, grad, buf, rows in ((weight, grad_w, velocity[0], lr_rows[:, None]),
                                       (bias, grad_b, velocity[1], lr_rows)):
            buf.mul_(momentum).add_(grad)
            param.sub_(scale * rows * (grad + momentum * buf))  # Nesterov momentum (Sutskever et al. 2013)
    return weight.view(heads, num_classes, dim), bias.view(heads, num_classes)


# ----------------------------------------------------------------------------- shared


@torch.no_grad()
def _ranks(x: torch.Tensor, y: torch.Tensor, weights: Weights, chunk: int = 65536) -> torch.Tensor:
    """Rank of the true class under the classifier ``weights`` for every row of ``x``."""
    return torch.cat([true_class_rank(F.linear(x[i : i + chunk], *weights), y[i : i + chunk])
                      for i in range(0, x.shape[0], chunk)])


def _accuracies(x: torch.Tensor, y: torch.Tensor, weights: Weights) -> tuple[float, float]:
    """Top-1 and top-5 accuracy of the linear classifier ``weights`` on [N, D] / [N]."""
    ranks = _ranks(x, y, weights)
    return int((ranks < 1).sum()) / ranks.numel(), int((ranks < 5).sum()) / ranks.numel()


def _head_top1(x: torch.Tensor, y: torch.Tensor, weights: Weights) -> float:
    """Top-1 of one head; a head with non-finite weights (diverged) scores -1."""
    if not (bool(torch.isfinite(weights[0]).all()) and bool(torch.isfinite(weights[1]).all())):
        return -1.0
    return _accuracies(x, y, weights)[0]


def _check_grid(values: Sequence[float], name: str, positive: bool) -> list[float]:
    out = sorted({float(v) for v in values}, reverse=True)
    bad = not out or any(not math.isfinite(v) or v < 0 or (positive and v == 0) for v in out)
    if bad:
        kind = "> 0" if positive else ">= 0"
        raise SelfsupError(f"{name} must be a non-empty list of finite values {kind}, got {list(values)}")
    return out


@dataclass
class _Settings:
    loss: str
    solver: str
    lrs: list[float]
    decays: list[float]
    val_fraction: float
    seed: int
    max_iter: int
    steps: int
    batch_size: int
    momentum: float
    hinge_form: str = "weston_watkins"


def _check_settings(loss: str, solver: str | None, learning_rates, weight_decays, val_fraction: float, seed: int,
                    max_iter: int, steps: int, batch_size: int, momentum: float,
                    hinge_form: str = "weston_watkins") -> _Settings:
    if loss not in LOSSES:
        raise SelfsupError(f"linear probe loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if hinge_form not in HINGE_FORMS:
        raise SelfsupError(f"linear probe hinge_form must be one of {', '.join(HINGE_FORMS)}, got {hinge_form!r}")
    solver = solver or "sgd"
    if solver not in SOLVERS:
        raise SelfsupError(f"linear probe solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    if solver == "lbfgs" and loss != "softmax":
        raise SelfsupError("solver='lbfgs' needs a smooth loss (softmax); the hinge is not differentiable: use 'sgd'")
    if not 0 < val_fraction < 1:
        raise SelfsupError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    for name, value in (("max_iter", max_iter), ("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise SelfsupError(f"{name} must be a positive integer, got {value}")
    if not 0 <= momentum < 1:
        raise SelfsupError(f"momentum must lie in [0, 1), got {momentum}")
    lrs = _check_grid(learning_rates, "learning_rates", positive=True) if solver == "sgd" else []
    return _Settings(loss, solver, lrs, _check_grid(weight_decays, "weight_decays", positive=False), val_fraction,
                     seed, int(max_iter), int(steps), int(batch_size), momentum, hinge_form)


def select_hyperparameters(
    x_train: torch.Tensor, y_train: torch.Tensor, num_classes: int, settings: _Settings, progress: bool = False
) -> tuple[float | None, float, float, Weights | None, list[dict]]:
    """Choose (learning rate, weight decay) on a held-out split of the training set.

    Only training features and labels come in: the test set cannot influence the choice.
    The candidate with the best held-out top-1 wins; ties go to the larger weight decay, then
    the smaller learning rate (the more conservative fit).

    Returns:
        ``(lr or None, weight_decay, val_top1, weights of the winner on the fit part (L-BFGS warm start) or None,
        every candidate's {"lr", "weight_decay", "val_top1"})``.
    """
    fit_idx, val_idx = _stratified_split(y_train, settings.val_fraction, settings.seed)
    if val_idx.numel() == 0:
        raise SelfsupError(
            f"val_fraction={settings.val_fraction} of {y_train.numel()} training samples leaves no validation set"
        )
    fit_idx, val_idx = fit_idx.to(x_train.device), val_idx.to(x_train.device)
    x_fit, y_fit, x_val, y_val = x_train[fit_idx], y_train[fit_idx], x_train[val_idx], y_train[val_idx]
    sweep: list[dict] = []
    if settings.solver == "lbfgs":
        best = None
        weights = None
        bar = progress_bar(settings.decays, desc="linear probe", unit="wd", disable=not progress)
        for wd in bar:  # largest decay first, each warm-started from the previous one: a regularisation path
            weights = _fit(x_fit, y_fit, num_classes, wd, weights, settings.max_iter)
            val_top1 = _head_top1(x_val, y_val, weights)
            sweep.append({"lr": None, "weight_decay": wd, "val_top1": val_top1})
            if best is None or val_top1 > best[0]:
                best = (val_top1, wd, weights)
        assert best is not None
        return None, best[1], best[0], best[2], sweep
    # Candidates in tie-break order: larger decay first, then smaller learning rate.
    grid = [(lr, wd) for wd in settings.decays for lr in sorted(settings.lrs)]
    lrs = torch.tensor([lr for lr, _ in grid], dtype=torch.float64)
    wds = torch.tensor([wd for _, wd in grid], dtype=torch.float64)
    weights, biases = _fit_heads(x_fit, y_fit, num_classes, lrs, wds, loss=settings.loss, steps=settings.steps,
                                 batch_size=settings.batch_size, momentum=settings.momentum, seed=settings.seed,
                                 progress=progress, hinge_form=settings.hinge_form)
    best = None
    for g, (lr, wd) in enumerate(grid):
        val_top1 = _head_top1(x_val, y_val, (weights[g], biases[g]))
        sweep.append({"lr": lr, "weight_decay": wd, "val_top1": val_top1})
        if best is None or val_top1 > best[0]:
            best = (val_top1, lr, wd)
    assert best is not None
    if best[0] < 0:
        raise SelfsupError("every linear-probe candidate diverged (non-finite weights): lower learning_rates")
    return best[1], best[2], best[0], None, sweep


def fit_linear_probe(
    train_features: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    *,
    num_classes: int | None = None,
    loss: str = "softmax",
    solver: str | None = None,
    learning_rates: Sequence[float] = DEFAULT_LEARNING_RATES,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    val_fraction: float = 0.1,
    seed: int = 0,
    steps: int = 500,
    batch_size: int = 1024,
    momentum: float = 0.9,
    max_iter: int = 200,
    device: torch.device | str | None = None,
    progress: bool = True,
    hinge_form: str = "weston_watkins",
) -> LinearProbe:
    """Choose the hyper-parameters on held-out training data, refit on all of it (see :func:`linear_probe`)."""
    settings = _check_settings(loss, solver, learning_rates, weight_decays, val_fraction, seed, max_iter, steps,
                               batch_size, momentum, hinge_form)
    x_train, y_train, _, _, classes = prepare_labelled_features(
        train_features, train_labels, train_features[:1], train_labels[:1], num_classes
    )
    run_device = x_train.device if device is None else torch.device(device)
    x_train, y_train = x_train.to(run_device), y_train.to(run_device)
    mean, std = _standard_stats(x_train)
    x_train = (x_train - mean) / std
    lr, wd, val_top1, warm, sweep = select_hyperparameters(x_train, y_train, classes, settings, progress)
    if settings.solver == "lbfgs":
        weights = _fit(x_train, y_train, classes, wd, warm, settings.max_iter)
    else:
        pair = torch.tensor([lr], dtype=torch.float64), torch.tensor([wd], dtype=torch.float64)
        w, b = _fit_heads(x_train, y_train, classes, *pair, loss=settings.loss, steps=settings.steps,
                          batch_size=settings.batch_size, momentum=settings.momentum, seed=settings.seed + 1,
                          hinge_form=settings.hinge_form)
        weights = (w[0], b[0])
        if not bool(torch.isfinite(weights[0]).all()):
            raise SelfsupError(f"the linear probe's refit on all training data diverged at lr={lr}: "
                               "lower learning_rates")
    form = settings.hinge_form if settings.loss == "hinge" else None
    return LinearProbe(weights[0], weights[1], mean, std, settings.loss, settings.solver, wd, lr, val_top1, sweep, form)


def linear_probe(
    train_features: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    test_features: torch.Tensor | np.ndarray,
    test_labels: torch.Tensor | np.ndarray,
    *,
    num_classes: int | None = None,
    loss: str = "softmax",
    solver: str | None = None,
    learning_rates: Sequence[float] = DEFAULT_LEARNING_RATES,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    val_fraction: float = 0.1,
    seed: int = 0,
    steps: int = 500,
    batch_size: int = 1024,
    momentum: float = 0.9,
    max_iter: int = 200,
    device: torch.device | str | None = None,
    progress: bool = True,
    return_probe: bool = False,
    hinge_form: str = "weston_watkins",
):
    """Linear-probe top-1 / top-5 accuracy with hyper-parameters chosen on training data only.

    1. Standardise features with the per-dimension mean/std of the training features.
    2. Hold out a stratified ``val_fraction`` of the *training* features (seeded by ``seed``);
       fit every candidate on the rest and keep the one with the best held-out top-1
       (:func:`select_hyperparameters`). ``sgd``: the grid ``learning_rates x weight_decays``,
       trained concurrently as heads of one wide linear layer. ``lbfgs``: ``weight_decays``
       only, largest first, each warm-started from the previous one (a regularisation path).
    3. Refit on all training features with the chosen pair and score the test features.

    The objective is ``mean loss + weight_decay / 2 * ||W||^2`` (bias not decayed); for the
    softmax this is scikit-learn's ``LogisticRegression(C=1 / (weight_decay * N))``.

    Args:
        train_features: [N, D] floats. train_labels: [N] integers in [0, C).
        test_features: [M, D] floats. test_labels: [M] integers in [0, C).
        num_classes: C; default ``1 + the largest label`` seen.
        loss: ``softmax`` (cross-entropy) or ``hinge`` (multiclass SVM, margin 1).
        solver: ``sgd`` (default) or ``lbfgs`` (softmax only).
        learning_rates: SGD peak learning rates to try (ignored by L-BFGS).
        weight_decays: L2 penalties to try (>= 0).
        val_fraction: share of each training class held out for the choice.
        seed: seed of the held-out split and of the SGD batch order.
        steps, batch_size, momentum: SGD updates, rows per update, Nesterov momentum (cosine decay to 0).
        max_iter: L-BFGS iterations per fit.
        device: where to fit; default: the device of ``train_features``.
        progress: show a progress bar (plain lines when not a terminal).
        return_probe: also return the fitted :class:`LinearProbe` (e.g. for a confusion matrix).
        hinge_form: the hinge's form, ``weston_watkins`` (sum over wrong classes) or ``crammer_singer`` (max).

    Returns:
        ``{"linear": {"top1", "top5", "loss", "solver", "lr", "weight_decay", "val_top1"[, "hinge_form"]}}``
        (``lr`` is ``None`` for L-BFGS; ``hinge_form`` with the hinge only), and the probe when ``return_probe``.
    """
    x_train, y_train, x_test, y_test, classes = prepare_labelled_features(
        train_features, train_labels, test_features, test_labels, num_classes
    )
    probe = fit_linear_probe(x_train, y_train, num_classes=classes, loss=loss, solver=solver,
                             learning_rates=learning_rates, weight_decays=weight_decays, val_fraction=val_fraction,
                             seed=seed, steps=steps, batch_size=batch_size, momentum=momentum, max_iter=max_iter,
                             device=device, progress=progress, hinge_form=hinge_form)
    x_test = (x_test.to(probe.weight.device) - probe.mean) / probe.std
    top1, top5 = _accuracies(x_test, y_test.to(probe.weight.device), (probe.weight, probe.bias))
    result = {"linear": {"top1": top1, "top5": top5, "loss": probe.loss, "solver": probe.solver, "lr": probe.lr,
                         "weight_decay": probe.weight_decay, "val_top1": probe.val_top1}}
    if probe.hinge_form is not None:
        result["linear"]["hinge_form"] = probe.hinge_form
    return (result, probe) if return_probe else result
