"""Weighted kNN (selfsup.evaluation.knn), checked against a brute-force loop written directly from
Wu et al. 2018 (float64 numpy, Python sorting); faiss IVF and the GPU path."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from selfsup.core.errors import DataError, SelfsupError
from selfsup.evaluation import knn_classify
from selfsup.evaluation.knn import true_class_rank
from support import split


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


# ----------------------------------------------------------------------------- IVF and GPU


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


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_knn_on_gpu_matches_brute_force():
    x_tr, y_tr, x_te, y_te = split(240, 60, 8, 16, spread=0.6, seed=3)
    result = knn_classify(x_tr.cuda(), y_tr.cuda(), x_te.cuda(), y_te.cuda(), ks=(5, 20))  # auto: torch on GPU
    for k in (5, 20):
        ref = reference_knn(x_tr, y_tr, x_te, y_te, k, 0.07, 8)
        assert result[f"knn_k{k}"]["top1"] == sum(r[0] for r in ref) / len(ref)
