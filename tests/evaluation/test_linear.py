"""The linear probe (selfsup.evaluation.linear): L-BFGS checked against scikit-learn's LogisticRegression
on the same standardised features; SGD heads (softmax and multiclass hinge) trained at once; the
hyperparameter choice sees the training data only."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from selfsup.core.errors import DataError, SelfsupError
from selfsup.evaluation import linear_probe
from selfsup.evaluation.linear import _fit, _fit_heads, _score_gradient, _standardise
from support import split


def test_linear_probe_separable_clusters():
    x_tr, y_tr, x_te, y_te = split(500, 200, 5, 16, spread=3.0, seed=7)
    r = linear_probe(x_tr, y_tr, x_te, y_te, progress=False)["linear"]
    assert r["top1"] > 0.95 and r["val_top1"] > 0.95
    assert r["top1"] <= r["top5"] <= 1.0
    assert r["weight_decay"] in (0.0, 1e-5, 1e-4, 1e-3, 1e-2)


def test_linear_probe_random_labels_is_near_chance():
    g = torch.Generator().manual_seed(8)
    x_tr, x_te = torch.randn(600, 24, generator=g), torch.randn(400, 24, generator=g)
    y_tr, y_te = torch.randint(0, 10, (600,), generator=g), torch.randint(0, 10, (400,), generator=g)
    r = linear_probe(x_tr, y_tr, x_te, y_te, progress=False)["linear"]
    assert r["top1"] < 0.2  # chance is 0.1; one standard deviation is 0.015


def test_linear_probe_choice_ignores_test_set():
    x_tr, y_tr, x_te, y_te = split(400, 200, 6, 32, spread=0.35, seed=9)
    kwargs = dict(weight_decays=(0.0, 1e-3, 1e-1, 1.0), max_iter=50, progress=False)
    base = linear_probe(x_tr, y_tr, x_te, y_te, **kwargs)["linear"]
    permuted = linear_probe(x_tr, y_tr, x_te, y_te[torch.randperm(200)], **kwargs)["linear"]
    zeros = torch.zeros(200, dtype=torch.long)
    garbage = linear_probe(x_tr, y_tr, torch.randn(200, 32) * 100, zeros, **kwargs)
    for other in (permuted, garbage["linear"]):
        assert other["weight_decay"] == base["weight_decay"]
        assert other["val_top1"] == base["val_top1"]
    assert permuted["top1"] != base["top1"]  # the test labels did reach the test accuracy


def test_linear_probe_lbfgs_sweeps_on_split_then_refits_on_all_training_data(monkeypatch):
    import selfsup.evaluation.linear as linear_module

    calls = []

    def recording_fit(x, y, num_classes, weight_decay, init, max_iter):
        calls.append((x.shape[0], weight_decay, init is None))
        return _fit(x, y, num_classes, weight_decay, init, max_iter)

    monkeypatch.setattr(linear_module, "_fit", recording_fit)
    x_tr, y_tr, x_te, y_te = split(200, 50, 4, 8, spread=0.5, seed=12)
    r = linear_probe(x_tr, y_tr, x_te, y_te, solver="lbfgs", weight_decays=(1e-4, 1e-2), val_fraction=0.25,
                     progress=False)
    n_fit = calls[0][0]
    assert 140 <= n_fit <= 160  # about 75 % of 200, per class
    assert calls[:2] == [(n_fit, 1e-2, True), (n_fit, 1e-4, False)]  # largest decay first, then warm
    assert calls[2] == (200, r["linear"]["weight_decay"], False)  # refit on every training row


def test_linear_probe_is_deterministic_and_order_free():
    x_tr, y_tr, x_te, y_te = split(300, 100, 4, 8, spread=0.5, seed=10)
    kwargs = dict(max_iter=50, progress=False)
    a = linear_probe(x_tr, y_tr, x_te, y_te, weight_decays=(0.0, 1e-2, 1e-3), **kwargs)
    b = linear_probe(x_tr, y_tr, x_te, y_te, weight_decays=(1e-3, 0.0, 1e-2), **kwargs)
    assert a == b
    c = linear_probe(x_tr, y_tr, x_te, y_te, weight_decays=(0.0, 1e-2, 1e-3), seed=1, **kwargs)
    assert c["linear"]["val_top1"] != a["linear"]["val_top1"] or c["linear"]["top1"] != a["linear"]["top1"]


def test_linear_probe_agrees_with_sklearn():
    from sklearn.linear_model import LogisticRegression

    x_tr, y_tr, x_te, y_te = split(600, 400, 4, 20, spread=0.3, seed=11)
    wd = 1e-2
    ours = linear_probe(x_tr, y_tr, x_te, y_te, solver="lbfgs", weight_decays=(wd,), progress=False)["linear"]
    s_tr, s_te = _standardise(x_tr, x_te)
    clf = LogisticRegression(C=1.0 / (wd * len(s_tr)), max_iter=1000, tol=1e-8)
    clf.fit(s_tr.numpy(), y_tr.numpy())
    sk_top1 = float((clf.predict(s_te.numpy()) == y_te.numpy()).mean())
    assert 0.5 < sk_top1 < 0.98  # non-trivial
    assert abs(ours["top1"] - sk_top1) <= 0.02
    # Same objective, so the same optimum: weights match; biases match up to a shared constant.
    weight, bias = _fit(s_tr, y_tr, 4, wd, None, max_iter=500)
    torch.testing.assert_close(weight, torch.from_numpy(clf.coef_).float(), atol=2e-3, rtol=1e-2)
    sk_bias = torch.from_numpy(clf.intercept_).float()
    torch.testing.assert_close(bias - bias.mean(), sk_bias - sk_bias.mean(), atol=2e-3, rtol=1e-2)


def test_linear_probe_rejects_bad_arguments():
    x_tr, y_tr, x_te, y_te = split(50, 10, 2, 4, spread=1.0, seed=0)
    with pytest.raises(SelfsupError):
        linear_probe(x_tr, y_tr, x_te, y_te, weight_decays=(), progress=False)
    with pytest.raises(SelfsupError):
        linear_probe(x_tr, y_tr, x_te, y_te, weight_decays=(-1.0,), progress=False)
    with pytest.raises(SelfsupError):
        linear_probe(x_tr, y_tr, x_te, y_te, val_fraction=1.0, progress=False)
    with pytest.raises(DataError):
        linear_probe(x_tr, y_tr.float(), x_te, y_te, progress=False)
    with pytest.raises(SelfsupError, match="loss"):
        linear_probe(x_tr, y_tr, x_te, y_te, loss="logistic", progress=False)
    with pytest.raises(SelfsupError, match="hinge"):
        linear_probe(x_tr, y_tr, x_te, y_te, loss="hinge", solver="lbfgs", progress=False)
    with pytest.raises(SelfsupError, match="learning_rates"):
        linear_probe(x_tr, y_tr, x_te, y_te, learning_rates=(0.0,), progress=False)
    with pytest.raises(SelfsupError, match="steps"):
        linear_probe(x_tr, y_tr, x_te, y_te, steps=0, progress=False)


# ----------------------------------------------------------------------------- SGD heads, hinge


@pytest.mark.parametrize("loss, form", [("softmax", "weston_watkins"), ("hinge", "weston_watkins"),
                                        ("hinge", "crammer_singer")])
def test_score_gradient_matches_autograd_of_the_losses(loss, form):
    from selfsup.losses import multiclass_hinge

    g = torch.Generator().manual_seed(0)
    scores = (torch.randn(16, 3, 5, generator=g) * 2).requires_grad_(True)  # B=16, G=3 heads, C=5
    y = torch.randint(0, 5, (16,), generator=g)
    per_head = [
        (multiclass_hinge(scores[:, h], y, form=form) if loss == "hinge" else F.cross_entropy(scores[:, h], y))
        for h in range(3)
    ]
    (expected,) = torch.autograd.grad(sum(per_head), scores)
    torch.testing.assert_close(_score_gradient(scores.detach(), y, loss, form), expected)
    if loss == "hinge":
        assert 0 < int((expected != 0).any(dim=2).sum()) < 48  # some samples inside the margin, some not
    if form == "weston_watkins" and loss == "hinge":  # some sample pays for two wrong classes (not the max form)
        assert int(((expected > 0).sum(dim=2) >= 2).sum()) > 0


def test_hinge_probe_form_is_recorded_and_checked():
    x_tr, y_tr, x_te, y_te = split(300, 100, 4, 8, spread=2.0, seed=5)
    ww = linear_probe(x_tr, y_tr, x_te, y_te, loss="hinge", steps=50, progress=False)["linear"]
    cs = linear_probe(x_tr, y_tr, x_te, y_te, loss="hinge", hinge_form="crammer_singer", steps=50,
                      progress=False)["linear"]
    assert ww["hinge_form"] == "weston_watkins" and cs["hinge_form"] == "crammer_singer"
    assert "hinge_form" not in linear_probe(x_tr, y_tr, x_te, y_te, steps=50, progress=False)["linear"]
    with pytest.raises(SelfsupError, match="hinge_form must be one of weston_watkins, crammer_singer"):
        linear_probe(x_tr, y_tr, x_te, y_te, loss="hinge", hinge_form="max", progress=False)


def test_heads_train_independently():
    x_tr, y_tr, _, _ = split(300, 10, 4, 8, spread=0.5, seed=15)
    x = _standardise(x_tr, x_tr)[0]
    lrs, wds = torch.tensor([0.01, 0.3, 0.1]), torch.tensor([0.0, 1e-3, 1e-2])
    kwargs = dict(loss="softmax", steps=40, batch_size=64, momentum=0.9, seed=3)
    together = _fit_heads(x, y_tr, 4, lrs, wds, **kwargs)
    for g in range(3):
        alone = _fit_heads(x, y_tr, 4, lrs[g : g + 1], wds[g : g + 1], **kwargs)
        torch.testing.assert_close(together[0][g], alone[0][0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(together[1][g], alone[1][0], atol=1e-5, rtol=1e-4)


def test_sgd_probe_reaches_the_lbfgs_optimum():
    x_tr, y_tr, x_te, y_te = split(1000, 400, 5, 16, spread=0.3, seed=16)
    sgd = linear_probe(x_tr, y_tr, x_te, y_te, weight_decays=(1e-3,), progress=False)["linear"]
    exact = linear_probe(x_tr, y_tr, x_te, y_te, solver="lbfgs", weight_decays=(1e-3,), progress=False)["linear"]
    assert 0.5 < exact["top1"] < 0.98  # non-trivial
    assert abs(sgd["top1"] - exact["top1"]) <= 0.02
    assert sgd["solver"] == "sgd" and sgd["lr"] in (0.01, 0.03, 0.1, 0.3, 1.0) and exact["lr"] is None


def test_hinge_probe_separable_and_comparable_to_softmax():
    x_tr, y_tr, x_te, y_te = split(500, 200, 5, 16, spread=3.0, seed=7)
    r = linear_probe(x_tr, y_tr, x_te, y_te, loss="hinge", progress=False)["linear"]
    assert r["top1"] > 0.95 and r["loss"] == "hinge"
    x_tr, y_tr, x_te, y_te = split(1000, 400, 5, 16, spread=0.3, seed=16)
    hinge = linear_probe(x_tr, y_tr, x_te, y_te, loss="hinge", progress=False)["linear"]
    softmax = linear_probe(x_tr, y_tr, x_te, y_te, progress=False)["linear"]
    assert abs(hinge["top1"] - softmax["top1"]) <= 0.05


@pytest.mark.parametrize("loss", ["softmax", "hinge"])
def test_hyperparameter_choice_receives_training_data_only(monkeypatch, loss):
    """A spy on the only function that chooses: it gets the training rows and nothing else."""
    import selfsup.evaluation.linear as linear_module

    seen = []
    real = linear_module.select_hyperparameters

    def spy(x_train, y_train, num_classes, settings, progress=False):
        seen.append((x_train.shape[0], y_train.clone()))
        return real(x_train, y_train, num_classes, settings, progress)

    monkeypatch.setattr(linear_module, "select_hyperparameters", spy)
    x_tr, y_tr, x_te, y_te = split(300, 100, 4, 8, spread=0.4, seed=17)
    kwargs = dict(loss=loss, learning_rates=(0.01, 0.1), weight_decays=(0.0, 1e-2), steps=100, progress=False)
    base = linear_probe(x_tr, y_tr, x_te, y_te, **kwargs)["linear"]
    assert len(seen) == 1 and seen[0][0] == 300 and torch.equal(seen[0][1], y_tr)
    # And by its effect: other test labels or features leave the choice and its score unchanged.
    shuffled = linear_probe(x_tr, y_tr, x_te * 3 + 1, y_te[torch.randperm(100)], **kwargs)["linear"]
    for key in ("lr", "weight_decay", "val_top1"):
        assert shuffled[key] == base[key]


def test_sgd_sweep_then_refit_on_all_training_data(monkeypatch):
    import selfsup.evaluation.linear as linear_module

    calls = []

    def recording(x, y, num_classes, lrs, wds, **kw):
        calls.append((x.shape[0], lrs.tolist(), wds.tolist()))
        return _fit_heads(x, y, num_classes, lrs, wds, **kw)

    monkeypatch.setattr(linear_module, "_fit_heads", recording)
    x_tr, y_tr, x_te, y_te = split(200, 50, 4, 8, spread=0.5, seed=12)
    r = linear_probe(x_tr, y_tr, x_te, y_te, learning_rates=(0.1, 0.01), weight_decays=(0.0, 1e-2),
                     val_fraction=0.25, steps=50, progress=False)["linear"]
    assert len(calls) == 2
    assert 140 <= calls[0][0] <= 160 and len(calls[0][1]) == 4  # the 2 x 2 grid on 75 % of train, at once
    assert sorted(zip(calls[0][1], calls[0][2])) == sorted([(0.01, 0.0), (0.1, 0.0), (0.01, 1e-2), (0.1, 1e-2)])
    assert calls[1][0] == 200  # the refit sees every training row, with the chosen pair
    assert calls[1][1] == pytest.approx([r["lr"]]) and calls[1][2] == pytest.approx([r["weight_decay"]])


def test_fitted_probe_predicts_raw_features():
    x_tr, y_tr, x_te, y_te = split(400, 100, 4, 8, spread=0.5, seed=18)
    result, probe = linear_probe(x_tr, y_tr, x_te, y_te, progress=False, return_probe=True)
    assert float((probe.predict(x_te) == y_te).float().mean()) == pytest.approx(result["linear"]["top1"])
    assert len(probe.sweep) == 20 and max(s["val_top1"] for s in probe.sweep) == probe.val_top1
