"""Evaluation plots (selfsup.evaluation.plots): confusion counts against scikit-learn, stratified
sampling, t-SNE, PNGs, and one line without matplotlib."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from support import split


def test_confusion_counts_match_sklearn():
    from sklearn.metrics import confusion_matrix

    from selfsup.evaluation.plots import confusion_counts

    g = torch.Generator().manual_seed(0)
    y, p = torch.randint(0, 6, (200,), generator=g), torch.randint(0, 6, (200,), generator=g)
    assert (confusion_counts(y, p, 7) == confusion_matrix(y.numpy(), p.numpy(), labels=range(7))).all()


def test_stratified_sample_keeps_every_class():
    from selfsup.evaluation.plots import stratified_sample

    labels = np.array([0] * 900 + [1] * 95 + [2] * 5)
    rows = stratified_sample(labels, 100, seed=0)
    assert len(rows) <= 100 and len(set(rows.tolist())) == len(rows)
    counts = np.bincount(labels[rows], minlength=3)
    assert counts[0] == 90 and counts[1] in (9, 10) and counts[2] >= 1
    assert (stratified_sample(labels[:50], 100, seed=0) == np.arange(50)).all()


def test_eval_plots_are_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    from selfsup.evaluation.plots import write_eval_plots

    x_tr, y_tr, x_te, y_te = split(10, 120, 4, 8, spread=2.0, seed=19)
    written = write_eval_plots(tmp_path, x_te, y_te, ["w", "x", "y", "z"], predictions=y_te.flip(0), max_points=80)
    assert [p.name for p in written] == ["tsne.png", "confusion_linear.png"]
    for path in written:
        image = imread(path)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
        assert image[..., :3].std() > 0.01  # not a blank canvas


def test_tsne_separates_separable_clusters():
    from selfsup.evaluation.plots import tsne_embedding

    x_tr, y_tr, _, _ = split(90, 1, 3, 20, spread=8.0, seed=20)
    xy = tsne_embedding(x_tr, seed=0)
    assert xy.shape == (90, 2)
    centres = np.stack([xy[y_tr.numpy() == c].mean(0) for c in range(3)])
    spread = max(np.linalg.norm(xy[y_tr.numpy() == c] - centres[c], axis=1).mean() for c in range(3))
    gaps = [np.linalg.norm(centres[a] - centres[b]) for a in range(3) for b in range(a + 1, 3)]
    assert min(gaps) > 2 * spread


def test_plots_without_matplotlib_say_so_in_one_line(monkeypatch, tmp_path, capsys):
    import selfsup.evaluation.plots as plots_module

    monkeypatch.setattr(plots_module, "plots_available", lambda: False)
    assert plots_module.write_eval_plots(tmp_path, torch.randn(5, 3), torch.arange(5) % 2, ["a", "b"]) == []
    err = capsys.readouterr().err
    assert err.strip() == plots_module.MISSING_MATPLOTLIB and "pip install" in err
    assert not list(tmp_path.iterdir())
