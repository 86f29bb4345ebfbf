"""Pictures of an evaluation: t-SNE of the test features and the linear probe's confusion matrix.

Both are PNG files (matplotlib, the optional ``plots`` extra: ``pip install 'selfsup[plots]'``);
without matplotlib :func:`write_eval_plots` prints one line saying so and writes nothing.

- ``tsne.png``: t-SNE (van der Maaten & Hinton 2008, "Visualizing Data using t-SNE", JMLR) of
  up to 2000 test features, a class-stratified sample, coloured by class. As in that paper the
  features are first reduced to 50 dimensions with PCA, which speeds t-SNE up and removes noise.
- ``confusion_linear.png``: the linear probe's confusion matrix on the test split, each row
  normalised to the true class's size (the diagonal is the per-class recall), counts in the
  cells when there are at most 20 classes.
"""
from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from selfsup.core.files import PathError, check_writable_dir, writing

__all__ = ["write_eval_plots", "tsne_plot", "confusion_plot", "tsne_embedding", "confusion_counts",
           "plots_available", "MISSING_MATPLOTLIB"]

MISSING_MATPLOTLIB = "selfsup: evaluation plots skipped: matplotlib is not installed (pip install 'selfsup[plots]')"


def plots_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def stratified_sample(labels: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    """Sorted indices of ``max_points`` rows (all rows if fewer), each class keeping its share and at least
    one row (so with more classes than ``max_points`` there is one row per class)."""
    n = labels.shape[0]
    if n <= max_points:
        return np.arange(n)
    classes, counts = np.unique(labels, return_counts=True)
    exact = max_points * counts / n
    quota = np.maximum(1, np.floor(exact)).astype(int)
    by_remainder = np.argsort(-(exact - np.floor(exact)), kind="stable")
    i = 0
    while quota.sum() < max_points:  # largest remainders first
        c = by_remainder[i % len(classes)]
        quota[c] += int(quota[c] < counts[c])
        i += 1
    while quota.sum() > max_points and quota.max() > 1:  # the minimum of one per class overshot
        quota[np.argmax(quota)] -= 1
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(labels == c), size=q, replace=False) for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picks))


def tsne_embedding(features: torch.Tensor | np.ndarray, seed: int = 0) -> np.ndarray:
    """[N, D] features -> [N, 2] t-SNE coordinates (PCA to 50 dimensions first; PCA init; seeded)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(torch.as_tensor(features).float().cpu().numpy(), dtype=np.float32)
    n = x.shape[0]
    if n < 3:
        raise ValueError(f"t-SNE needs at least 3 points, got {n}")
    dims = min(50, x.shape[1], n)
    if dims < x.shape[1]:
        x = PCA(n_components=dims, random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, (n - 1) / 3))  # sklearn requires perplexity < n
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def tsne_plot(features, labels, classes: Sequence[str], path: str | Path, *, max_points: int = 2000,
              seed: int = 0, title: str = "t-SNE of test features") -> Path:
    """Write ``path`` (PNG): t-SNE of a class-stratified sample of ``features`` coloured by ``labels``."""
    plt = _pyplot()
    labels = np.asarray(torch.as_tensor(labels).cpu().numpy())
    rows = stratified_sample(labels, max_points, seed)
    xy = tsne_embedding(torch.as_tensor(features)[torch.from_numpy(rows)], seed)
    picked = labels[rows]
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20" if len(classes) <= 20 else "turbo")
    fig, ax = plt.subplots(figsize=(7, 6))
    for c in np.unique(picked):
        colour = cmap(int(c) % cmap.N) if cmap.N < 256 else cmap(int(c) / max(1, len(classes) - 1))
        mask = picked == c
        ax.scatter(xy[mask, 0], xy[mask, 1], s=6, color=colour, label=str(classes[int(c)]), alpha=0.8, linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{title} ({len(rows)} of {len(labels)} points)")
    if len(classes) <= 20:
        ax.legend(markerscale=3, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return _save(fig, plt, path)


def confusion_counts(labels, predictions, num_classes: int) -> np.ndarray:
    """int64 [C, C]: ``counts[t, p]`` = test samples of true class t predicted as p."""
    t = torch.as_tensor(labels).long().cpu()
    p = torch.as_tensor(predictions).long().cpu()
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).view(
        num_classes, num_classes).numpy()


def confusion_plot(labels, predictions, classes: Sequence[str], path: str | Path, *,
                   title: str = "linear probe: confusion matrix (test)") -> Path:
    """Write ``path`` (PNG): the row-normalised confusion matrix of ``predictions`` against ``labels``."""
    plt = _pyplot()
    counts = confusion_counts(labels, predictions, len(classes))
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = min(4 + 0.45 * len(classes), 16)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ticks = np.arange(len(classes))
    if len(classes) <= 50:
        ax.set_xticks(ticks, [str(c) for c in classes], rotation=90, fontsize=8)
        ax.set_yticks(ticks, [str(c) for c in classes], fontsize=8)
    if len(classes) <= 20:
        for t in ticks:
            for p in ticks:
                if counts[t, p]:
                    ax.text(p, t, str(counts[t, p]), ha="center", va="center", fontsize=7,
                            color="white" if rates[t, p] > 0.5 else "black")
    accuracy = np.trace(counts) / max(1, counts.sum())
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{title}, top-1 {accuracy:.4f}")
    return _save(fig, plt, path)


def _save(fig, plt, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path


def write_eval_plots(out_dir: str | Path, test_features, test_labels, classes: Sequence[str], *,
                     predictions=None, max_points: int = 2000, seed: int = 0) -> list[Path]:
    """``out_dir/tsne.png`` and, given the linear probe's ``predictions``, ``out_dir/confusion_linear.png``.

    Without matplotlib: prints :data:`MISSING_MATPLOTLIB` to stderr and returns ``[]``. A plot that
    cannot be written (read-only folder, another user's) is one warning, not an error: the results
    it illustrates are what counts. A folder that cannot be written skips the t-SNE computation too.
    """
    if not plots_available():
        print(MISSING_MATPLOTLIB, file=sys.stderr)
        return []
    out_dir = Path(out_dir)
    try:
        check_writable_dir(out_dir, "")
    except PathError as err:
        warnings.warn(f"{err}; evaluation plots skipped", stacklevel=2)
        return []
    jobs = [(out_dir / "tsne.png", lambda path: tsne_plot(test_features, test_labels, classes, path,
                                                           max_points=max_points, seed=seed))]
    if predictions is not None:
        jobs.append((out_dir / "confusion_linear.png", lambda path: confusion_plot(test_labels, predictions, classes, path)))
    written = []
    for path, plot in jobs:
        try:
            with writing(path):
                written.append(plot(path))
        except PathError as err:
            warnings.warn(f"{err}; plot skipped", stacklevel=2)
    return written
