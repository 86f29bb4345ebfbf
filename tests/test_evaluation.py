"""Tests for selfsup.evaluation: feature extraction, weighted kNN, linear probe.

The kNN protocol is checked against a brute-force loop written directly from Wu et al.
2018 (float64 numpy, Python sorting); the linear probe against scikit-learn's
LogisticRegression on the same standardised features.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.errors import DataError, SelfsupError
from selfsup.evaluation import extract_features, knn_classify, linear_probe
from selfsup.evaluation.knn import true_class_rank
from selfsup.evaluation.linear import _fit, _standardise


def clustered(
    n: int, num_classes: int, dim: int, spread: float, seed: int, centers: torch.Tensor | None = None
):
    """Gaussian clusters: labels [n] uniform, features [n, dim] = centre * spread + N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    if centers is None:
        centers = torch.randn(num_classes, dim, generator=g)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    return centers[labels] * spread + torch.randn(n, dim, generator=g), labels, centers


def split(n_train: int, n_test: int, num_classes: int, dim: int, spread: float, seed: int = 0):
    x_tr, y_tr, centers = clustered(n_train, num_classes, dim, spread, seed)
    x_te, y_te, _ = clustered(n_test, num_classes, dim, spread, seed + 1, centers)
    return x_tr, y_tr, x_te, y_te


# ----------------------------------------------------------------------------- kNN


def reference_knn(x_tr, y_tr, x_te, y_te, k: int, temperature: float, num_classes: int):
    """Per-test-sample (top-1 correct, top-5 correct), straight from the formula."""
    a = x_tr.double().numpy()
    b = x_te.double().numpy()
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    k = min(k, len(a))
    out = []
    for i in range(len(b)):
        sims = [float(np.dot(a[j], b[i])) for j in range(len(a))]
        nearest = sorted(range(len(a)), key=lambda j: -sims[j])[:k]
        votes = [0.0] * num_classes
        for j in nearest:
            votes[int(y_tr[j])] += math.exp(sims[j] / temperature)
        ranking = sorted(range(num_classes), key=lambda c: (-votes[c], c))
        out.append((ranking[0] == int(y_te[i]), int(y_te[i]) in ranking[:5]))
    return out


@pytest.mark.parametrize("temperature", [0.07, 0.01])
def test_knn_matches_brute_force(temperature):
    x_tr, y_tr, x_te, y_te = split(240, 60, 8, 16, spread=0.6, seed=3)
    ks = (1, 5, 20, 100)
    result = knn_classify(x_tr, y_tr, x_te, y_te, ks=ks, temperature=temperature, chunk_size=17)
    assert set(result) == {f"knn_k{k}" for k in ks}
    for k in ks:
        ref = reference_knn(x_tr, y_tr, x_te, y_te, k, temperature, 8)
        assert result[f"knn_k{k}"]["top1"] == sum(r[0] for r in ref) / len(ref)
        assert result[f"knn_k{k}"]["top5"] == sum(r[1] for r in ref) / len(ref)
        assert result[f"knn_k{k}"]["k"] == k
        assert result[f"knn_k{k}"]["temperature"] == temperature
    # The task must be non-trivial, or the comparison above proves little.
    assert 0.2 < result["knn_k20"]["top1"] < 0.95


def test_knn_per_sample_predictions_match_brute_force():
    x_tr, y_tr, x_te, y_te = split(200, 40, 6, 12, spread=0.5, seed=5)
    ref = reference_knn(x_tr, y_tr, x_te, y_te, 10, 0.07, 6)
    for i in range(len(x_te)):
        one = knn_classify(x_tr, y_tr, x_te[i : i + 1], y_te[i : i + 1], ks=10, num_classes=6)["knn_k10"]
        assert (one["top1"] == 1.0) == ref[i][0]
        assert (one["top5"] == 1.0) == ref[i][1]


def test_knn_chunking_and_input_types_do_not_change_results():
    x_tr, y_tr, x_te, y_te = split(300, 90, 10, 8, spread=0.7, seed=1)
    base = knn_classify(x_tr, y_tr, x_te, y_te, ks=(3, 30))
    assert knn_classify(x_tr, y_tr, x_te, y_te, ks=(3, 30), chunk_size=1) == base
    as_numpy = knn_classify(
        x_tr.numpy(), y_tr.numpy(), x_te.double().numpy(), y_te.int().numpy(), ks=(3, 30)
    )
    assert as_numpy == base


def test_knn_k_larger_than_train_set_is_clipped():
    x_tr, y_tr, x_te, y_te = split(30, 20, 3, 4, spread=0.5, seed=2)
    result = knn_classify(x_tr, y_tr, x_te, y_te, ks=(5, 100))
    assert result["knn_k100"]["k"] == 30 and result["knn_k5"]["k"] == 5
    full = knn_classify(x_tr, y_tr, x_te, y_te, ks=(30,))["knn_k30"]
    assert result["knn_k100"]["top1"] == full["top1"] and result["knn_k100"]["top5"] == full["top5"]


def test_knn_top5_at_least_top1_and_few_classes():
    x_tr, y_tr, x_te, y_te = split(400, 100, 12, 8, spread=0.4, seed=4)
    for r in knn_classify(x_tr, y_tr, x_te, y_te, ks=(1, 7, 50)).values():
        assert 0.0 <= r["top1"] <= r["top5"] <= 1.0
    x_tr, y_tr, x_te, y_te = split(100, 50, 3, 8, spread=0.2, seed=4)
    assert knn_classify(x_tr, y_tr, x_te, y_te, ks=(5,))["knn_k5"]["top5"] == 1.0  # C = 3 < 5


def test_knn_separable_clusters_are_perfect():
    x_tr, y_tr, x_te, y_te = split(300, 100, 5, 32, spread=10.0, seed=6)
    for r in knn_classify(x_tr, y_tr, x_te, y_te, ks=(1, 20, 200)).values():
        assert r["top1"] == 1.0


def test_true_class_rank_breaks_ties_towards_lower_class():
    scores = torch.tensor([[1.0, 3.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert true_class_rank(scores, torch.tensor([2, 0])).tolist() == [1, 0]
    assert true_class_rank(scores, torch.tensor([1, 3])).tolist() == [0, 3]


def test_knn_rejects_bad_input():
    x_tr, y_tr, x_te, y_te = split(20, 10, 3, 4, spread=1.0, seed=0)
    with pytest.raises(DataError):
        knn_classify(x_tr, y_tr, x_te[:, :3], y_te)
    with pytest.raises(DataError):
        knn_classify(x_tr, y_tr, x_te, y_te, num_classes=2)
    with pytest.raises(DataError):
        knn_classify(x_tr, y_tr[:-1], x_te, y_te)
    with pytest.raises(SelfsupError):
        knn_classify(x_tr, y_tr, x_te, y_te, ks=(0,))
    bad = x_tr.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(DataError):
        knn_classify(bad, y_tr, x_te, y_te)


# ----------------------------------------------------------------------------- linear probe


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


def test_linear_probe_sweeps_on_split_then_refits_on_all_training_data(monkeypatch):
    import selfsup.evaluation.linear as linear_module

    calls = []

    def recording_fit(x, y, num_classes, weight_decay, init, max_iter):
        calls.append((x.shape[0], weight_decay, init is None))
        return _fit(x, y, num_classes, weight_decay, init, max_iter)

    monkeypatch.setattr(linear_module, "_fit", recording_fit)
    x_tr, y_tr, x_te, y_te = split(200, 50, 4, 8, spread=0.5, seed=12)
    r = linear_probe(x_tr, y_tr, x_te, y_te, weight_decays=(1e-4, 1e-2), val_fraction=0.25, progress=False)
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
    ours = linear_probe(x_tr, y_tr, x_te, y_te, weight_decays=(wd,), progress=False)["linear"]
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


# ----------------------------------------------------------------------------- features


def tiny_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    # Non-trivial running statistics, so a forward in train mode would give other numbers.
    net[1].running_mean.uniform_(-0.5, 0.5)
    net[1].running_var.uniform_(0.5, 2.0)
    return net


MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def manual_features(
    net: nn.Module, images: torch.Tensor, size: int | None = None, antialias: bool = False
) -> torch.Tensor:
    x = images.float() / 255
    if size is not None:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    net.eval()
    with torch.no_grad():
        return net(x)


def test_extract_features_matches_manual_forward():
    net = tiny_net()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (7, 3, 10, 10), dtype=torch.uint8, generator=g)
    out = extract_features(net, images, MEAN, STD, batch_size=3, progress=False)
    assert out.shape == (7, 8) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert not out.is_inference()
    torch.testing.assert_close(out, manual_features(net, images), atol=1e-5, rtol=1e-5)
    resized = extract_features(net, images, torch.tensor(MEAN), list(STD), image_size=16, progress=False)
    torch.testing.assert_close(resized, manual_features(net, images, size=16), atol=1e-5, rtol=1e-5)
    shrunk = extract_features(net, images, MEAN, STD, image_size=6, progress=False)  # antialiased, like torchvision
    torch.testing.assert_close(shrunk, manual_features(net, images, 6, antialias=True), atol=1e-5, rtol=1e-5)


def test_extract_features_restores_modes_and_leaves_state_alone():
    net = tiny_net()
    images = torch.randint(0, 256, (5, 3, 6, 6), dtype=torch.uint8)
    stats = net[1].running_mean.clone()
    net.train()
    net[1].eval()  # mixed modes must survive as they are
    extract_features(net, images, MEAN, STD, progress=False)
    assert [m.training for m in net.modules()] == [True, True, False, True, True, True]
    assert torch.equal(net[1].running_mean, stats)
    net.eval()
    extract_features(net, images, MEAN, STD, progress=False)
    assert not any(m.training for m in net.modules())
    assert all(p.grad is None for p in net.parameters())


def test_extract_features_restores_mode_on_error_and_checks_input():
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x  # [B, C, H, W], not [B, D]

    broken = Broken().train()
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    with pytest.raises(SelfsupError):
        extract_features(broken, images, MEAN, STD, progress=False)
    assert broken.training
    net = tiny_net()
    with pytest.raises(DataError):
        extract_features(net, images.double(), MEAN, STD, progress=False)  # float32 = non-image data, accepted
    with pytest.raises(DataError):
        extract_features(net, images, (0.5, 0.5), STD, progress=False)
    with pytest.raises(DataError):
        extract_features(net, images[:0], MEAN, STD, progress=False)


def test_extract_features_constant_channel_std_zero_is_only_centred():
    net = tiny_net()
    images = torch.full((3, 3, 5, 5), 128, dtype=torch.uint8)
    out = extract_features(net, images, (128 / 255,) * 3, (0.0, 0.0, 0.0), progress=False)
    torch.testing.assert_close(out, net.eval()(torch.zeros(3, 3, 5, 5)).detach())
