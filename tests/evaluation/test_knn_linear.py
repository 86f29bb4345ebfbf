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

from selfsup.core.errors import DataError, SelfsupError
from selfsup.evaluation import extract_features, knn_classify, linear_probe
from selfsup.evaluation.knn import true_class_rank
from selfsup.evaluation.linear import _fit, _fit_heads, _score_gradient, _standardise


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


@pytest.mark.parametrize("backend", ["faiss", "torch"])
@pytest.mark.parametrize("temperature", [0.07, 0.01])
def test_knn_matches_brute_force(temperature, backend):
    x_tr, y_tr, x_te, y_te = split(240, 60, 8, 16, spread=0.6, seed=3)
    ks = (1, 5, 20, 100)
    result = knn_classify(x_tr, y_tr, x_te, y_te, ks=ks, temperature=temperature, chunk_size=17, backend=backend,
                          device="cpu")
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


# ----------------------------------------------------------------------------- kNN: IVF and GPU


def test_knn_ivf_probing_every_cell_is_exact_and_default_is_close():
    x_tr, y_tr, x_te, y_te = split(2000, 200, 10, 16, spread=0.5, seed=13)
    exact = knn_classify(x_tr, y_tr, x_te, y_te, ks=(20, 200), backend="faiss")
    every = knn_classify(x_tr, y_tr, x_te, y_te, ks=(20, 200), index="ivf", nlist=8, nprobe=8)
    assert every == exact
    approx = knn_classify(x_tr, y_tr, x_te, y_te, ks=(20, 200), index="ivf", nlist=32, nprobe=4)
    for key in exact:
        assert abs(approx[key]["top1"] - exact[key]["top1"]) <= 0.05


def test_knn_ivf_padding_gets_no_vote():
    """faiss pads a short IVF result with index -1 and similarity -FLT_MAX; such slots must not vote."""
    from selfsup.evaluation.knn import _class_votes, _FaissSearch

    x_tr, y_tr, x_te, y_te = split(400, 40, 4, 8, spread=0.6, seed=14)
    search = _FaissSearch(x_tr, "ivf", nlist=16, nprobe=1)
    sims, neighbours = search(x_te, 100)
    assert bool((neighbours < 0).any())  # 1 of 16 cells probed: some queries see fewer than 100 points
    padded = neighbours < 0
    votes = _class_votes(sims, y_tr[neighbours.clamp_min(0)], 0.07, 4)
    kept = _class_votes(sims.masked_fill(padded, 0.0), y_tr[neighbours.clamp_min(0)], 0.07, 4)
    # The same votes as if the padded slots had weight 0 (the first slot is never padded).
    assert not bool(padded[:, 0].any())
    weights = torch.exp((sims.double() - sims.double()[:, :1]) / 0.07).masked_fill(padded, 0.0)
    expected = torch.zeros(40, 4, dtype=torch.float64).scatter_add_(1, y_tr[neighbours.clamp_min(0)], weights)
    torch.testing.assert_close(votes, expected)
    assert not torch.equal(kept, expected)  # had they voted, the votes would differ


def test_knn_backend_arguments_are_checked():
    x_tr, y_tr, x_te, y_te = split(50, 10, 3, 4, spread=1.0, seed=0)
    with pytest.raises(SelfsupError, match="backend"):
        knn_classify(x_tr, y_tr, x_te, y_te, backend="annoy")
    with pytest.raises(SelfsupError, match="index"):
        knn_classify(x_tr, y_tr, x_te, y_te, index="hnsw")
    with pytest.raises(SelfsupError, match="ivf"):
        knn_classify(x_tr, y_tr, x_te, y_te, backend="torch", index="ivf")
    with pytest.raises(SelfsupError, match="nlist"):
        knn_classify(x_tr, y_tr, x_te, y_te, index="ivf", nlist=51)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_knn_on_gpu_matches_brute_force():
    x_tr, y_tr, x_te, y_te = split(240, 60, 8, 16, spread=0.6, seed=3)
    result = knn_classify(x_tr.cuda(), y_tr.cuda(), x_te.cuda(), y_te.cuda(), ks=(5, 20))  # auto: torch on GPU
    for k in (5, 20):
        ref = reference_knn(x_tr, y_tr, x_te, y_te, k, 0.07, 8)
        assert result[f"knn_k{k}"]["top1"] == sum(r[0] for r in ref) / len(ref)


# ----------------------------------------------------------------------------- linear probe: SGD heads, hinge


@pytest.mark.parametrize("loss", ["softmax", "hinge"])
def test_score_gradient_matches_autograd_of_the_losses(loss):
    from selfsup.losses import multiclass_hinge

    g = torch.Generator().manual_seed(0)
    scores = (torch.randn(16, 3, 5, generator=g) * 2).requires_grad_(True)  # B=16, G=3 heads, C=5
    y = torch.randint(0, 5, (16,), generator=g)
    per_head = [
        (multiclass_hinge if loss == "hinge" else F.cross_entropy)(scores[:, h], y) for h in range(3)
    ]
    (expected,) = torch.autograd.grad(sum(per_head), scores)
    torch.testing.assert_close(_score_gradient(scores.detach(), y, loss), expected)
    if loss == "hinge":
        assert 0 < int((expected != 0).any(dim=2).sum()) < 48  # some samples inside the margin, some not


def test_hinge_loss_is_the_multiclass_svm_formula():
    from selfsup.losses import multiclass_hinge

    scores = torch.tensor([[2.0, 1.5, -1.0], [0.0, 3.0, 2.5], [1.0, 1.0, 4.0]])
    y = torch.tensor([0, 1, 0])
    # Crammer-Singer: max(0, 1 + max_{j != y} s_j - s_y) per sample, then the mean.
    expected = (max(0.0, 1 + 1.5 - 2.0) + max(0.0, 1 + 2.5 - 3.0) + max(0.0, 1 + 4.0 - 1.0)) / 3
    assert multiclass_hinge(scores, y).item() == pytest.approx(expected)


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


# ----------------------------------------------------------------------------- feature cache


def _counting(monkeypatch):
    import selfsup.evaluation.features as features_module

    calls = []
    real = features_module.extract_features

    def spy(*args, **kwargs):
        calls.append(args[1].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(features_module, "extract_features", spy)
    return calls


def test_feature_cache_reuses_and_invalidates(monkeypatch, tmp_path):
    from selfsup.evaluation.features import cached_features

    calls = _counting(monkeypatch)
    net = tiny_net()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (9, 3, 6, 6), dtype=torch.uint8, generator=g)
    labels = torch.arange(9) % 3
    kw = dict(cache_dir=tmp_path, labels=labels, dataset_id="train", progress=False)
    first = cached_features(net, images, MEAN, STD, **kw)
    assert calls == [9] and len(list(tmp_path.glob("features-*.safetensors"))) == 1
    again = cached_features(net, images, MEAN, STD, **kw)
    assert calls == [9] and torch.equal(again, first)  # reused: the encoder did not run
    torch.testing.assert_close(first, manual_features(net, images), atol=1e-5, rtol=1e-5)

    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] += 1e-3  # one weight
    changed = cached_features(net, images, MEAN, STD, **kw)
    assert calls == [9, 9] and not torch.equal(changed, first)
    torch.testing.assert_close(changed, manual_features(net, images), atol=1e-5, rtol=1e-5)
    net[1].running_mean.add_(0.1)  # a buffer
    cached_features(net, images, MEAN, STD, **kw)
    assert len(calls) == 3
    cached_features(net, images, MEAN, (0.3, 0.3, 0.3), **kw)  # the transform
    cached_features(net, images, MEAN, STD, image_size=8, **kw)
    assert len(calls) == 5
    cached_features(net, images, MEAN, STD, **{**kw, "labels": labels.flip(0)})  # the labels
    other = images.clone()
    other[4, 0, 0, 0] ^= 1  # one pixel of a sampled image
    cached_features(net, other, MEAN, STD, **kw)
    cached_features(net, images, MEAN, STD, **{**kw, "dataset_id": "val"})  # the name
    assert len(calls) == 8
    cached_features(net, images, MEAN, STD, **kw)  # the last encoder/data/transform: still cached
    assert len(calls) == 8


def test_feature_cache_survives_a_corrupt_file(monkeypatch, tmp_path):
    from selfsup.evaluation.features import cached_features

    calls = _counting(monkeypatch)
    net, images = tiny_net(), torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    first = cached_features(net, images, MEAN, STD, cache_dir=tmp_path, progress=False)
    (file,) = tmp_path.glob("features-*.safetensors")
    file.write_bytes(b"garbage")
    again = cached_features(net, images, MEAN, STD, cache_dir=tmp_path, progress=False)
    assert len(calls) == 2 and torch.equal(again, first)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind


def _image_split(n: int, seed: int):
    from selfsup.data import ImageDataset

    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    # Class-dependent brightness, so the features carry the label.
    images = (torch.randint(0, 100, (n, 3, 6, 6), generator=g) + 70 * labels.view(n, 1, 1, 1)).to(torch.uint8)
    return ImageDataset(images, labels, ["a", "b", "c"], (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_second_protocol_reuses_features_and_plots_are_written(monkeypatch, tmp_path):
    from selfsup.config import EvalConfig
    from selfsup.evaluation.protocols import evaluate

    calls = _counting(monkeypatch)
    net, train, val = tiny_net(), _image_split(60, 0), _image_split(30, 1)
    cfg = EvalConfig(knn_k=[5])
    knn = evaluate(net, train, val, cfg, protocols=["knn"], progress=False, cache_dir=tmp_path / "features")
    assert calls == [60, 30]
    linear = evaluate(net, train, val, cfg, protocols=["linear"], progress=False, cache_dir=tmp_path / "features")
    assert calls == [60, 30]  # the linear probe ran on the features the kNN run extracted
    assert set(knn) == {"knn_k5"} and set(linear) == {"linear"}
    pytest.importorskip("matplotlib")
    evaluate(net, train, val, cfg, protocols=["linear"], progress=False, cache_dir=tmp_path / "features",
             plots_dir=tmp_path / "plots")
    assert calls == [60, 30]
    for name in ("tsne.png", "confusion_linear.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- plots


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
