"""Weighted k-nearest-neighbour classification on frozen features.

The protocol of Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination" (CVPR), also used by InstDisc/MoCo/DINO-style evaluations: features are
L2-normalised, the k training features with the highest cosine similarity ``s`` to a test
feature vote for their labels with weight ``exp(s / T)``, and the class with the largest
summed weight is the prediction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from selfsup.core.errors import DataError, SelfsupError

__all__ = ["knn_classify", "true_class_rank", "prepare_labelled_features", "BACKENDS", "INDEXES"]


def true_class_rank(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Rank of the true class in each row of ``scores`` (0 = predicted class).

    Ties are broken deterministically in favour of the lower class index, i.e. the rank is
    the position of the true class after a stable sort by descending score. Top-k accuracy
    is ``(rank < k).float().mean()``.

    Args:
        scores: [M, C] class scores (votes or logits).
        labels: [M] int64 true classes in ``[0, C)``.

    Returns:
        int64 [M].
    """
    true_score = scores.gather(1, labels[:, None])
    classes = torch.arange(scores.shape[1], device=scores.device)
    ahead = (scores > true_score) | ((scores == true_score) & (classes[None, :] < labels[:, None]))
    return ahead.sum(dim=1)


def prepare_labelled_features(
    train_features: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    test_features: torch.Tensor | np.ndarray,
    test_labels: torch.Tensor | np.ndarray,
    num_classes: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Check and convert two labelled feature sets; shared by the kNN and linear probes.

    Args:
        train_features: [N, D] floats; train_labels: [N] integers.
        test_features: [M, D] floats; test_labels: [M] integers.
        num_classes: C, or ``None`` for ``1 + the largest label`` in either set.

    Returns:
        ``(train_features float32 [N, D], train_labels int64 [N], test_features float32 [M, D],
        test_labels int64 [M], C)``, tensors on the device the features were on.
    """
    tensors = []
    for name, value, dim in (
        ("train_features", train_features, 2),
        ("train_labels", train_labels, 1),
        ("test_features", test_features, 2),
        ("test_labels", test_labels, 1),
    ):
        tensor = torch.as_tensor(value)
        if tensor.dim() != dim or tensor.shape[0] == 0:
            raise DataError(f"{name} must be a non-empty {dim}-D tensor, got shape {tuple(tensor.shape)}")
        tensors.append(tensor)
    x_train, y_train, x_test, y_test = tensors
    if x_train.shape[0] != y_train.shape[0] or x_test.shape[0] != y_test.shape[0]:
        raise DataError(
            f"features and labels disagree in length: train {x_train.shape[0]} vs {y_train.shape[0]}, "
            f"test {x_test.shape[0]} vs {y_test.shape[0]}"
        )
    if x_train.shape[1] != x_test.shape[1]:
        raise DataError(f"train features have D={x_train.shape[1]} but test features D={x_test.shape[1]}")
    if y_train.is_floating_point() or y_test.is_floating_point():
        raise DataError("labels must be integers, got floating-point labels")
    y_train, y_test = y_train.long(), y_test.long()
    largest = int(max(y_train.max(), y_test.max()))
    smallest = int(min(y_train.min(), y_test.min()))
    classes = largest + 1 if num_classes is None else int(num_classes)
    if smallest < 0 or largest >= classes:
        raise DataError(f"labels must lie in [0, {classes}), found values in [{smallest}, {largest}]")
    x_train, x_test = x_train.float(), x_test.float().to(x_train.device)
    for name, x in (("train_features", x_train), ("test_features", x_test)):
        if not bool(torch.isfinite(x).all()):
            raise DataError(f"{name} contains NaN or infinite values")
    return x_train, y_train.to(x_train.device), x_test, y_test.to(x_train.device), classes


def _class_votes(
    similarities: torch.Tensor, neighbour_labels: torch.Tensor, temperature: float, num_classes: int
) -> torch.Tensor:
    """Summed neighbour weights per class.

    Args:
        similarities: [M, k] cosine similarities of the k nearest neighbours, descending.
        neighbour_labels: [M, k] int64 labels of those neighbours.

    Returns:
        float64 [M, C]: ``votes[i, c] = sum_j [label_j == c] exp((s_ij - s_i1) / T)``.
        Subtracting the row's largest similarity scales a row by a positive constant, which
        leaves its ranking unchanged and keeps ``exp`` finite for small temperatures.
    """
    sims = similarities.double()
    weights = torch.exp((sims - sims[:, :1]) / temperature)
    votes = torch.zeros(sims.shape[0], num_classes, dtype=torch.float64, device=sims.device)
    return votes.scatter_add_(1, neighbour_labels, weights)


BACKENDS = ("auto", "faiss", "torch")
INDEXES = ("flat", "ivf")


def _check_knn_args(ks: Sequence[int] | int, temperature: float, chunk_size: int) -> list[int]:
    """Validate the kNN hyper-parameters; return the distinct ks in their given order."""
    ks = [ks] if isinstance(ks, int) else list(ks)
    if not ks or any(isinstance(k, bool) or int(k) != k or k < 1 for k in ks):
        raise SelfsupError(f"ks must be positive integers, got {ks}")
    if not temperature > 0:
        raise SelfsupError(f"temperature must be positive, got {temperature}")
    if chunk_size < 1:
        raise SelfsupError(f"chunk_size must be a positive integer, got {chunk_size}")
    return list(dict.fromkeys(int(k) for k in ks))


def _resolve_backend(backend: str, index: str, device: torch.device | str | None,
                     features: torch.Tensor) -> tuple[str, torch.device]:
    """(``faiss`` or ``torch``, the device the torch search runs on)."""
    if backend not in BACKENDS:
        raise SelfsupError(f"kNN backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if index not in INDEXES:
        raise SelfsupError(f"kNN index must be one of {', '.join(INDEXES)}, got {index!r}")
    if device is not None:
        run_device = torch.device(device)
    elif features.is_cuda:
        run_device = features.device
    else:
        run_device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if backend == "auto":
        backend = "torch" if run_device.type == "cuda" and index == "flat" else "faiss"
    if backend == "torch" and index != "flat":
        raise SelfsupError("the torch kNN backend searches exhaustively; index='ivf' needs backend='faiss'")
    return backend, (run_device if backend == "torch" else torch.device("cpu"))


class _FaissSearch:
    """Inner-product search over L2-normalised training features with faiss (CPU).

    ``flat``: exact (``IndexFlatIP``). ``ivf``: an inverted file (Jegou et al. 2011, "Product
    Quantization for Nearest Neighbor Search", IVF without quantised codes): k-means splits the
    training features into ``nlist`` cells and a query scans only its ``nprobe`` nearest cells,
    so a search costs about ``nprobe / nlist`` of the exact one; ``nprobe == nlist`` is exact.
    """

    def __init__(self, train: torch.Tensor, index: str, nlist: int | None, nprobe: int):
        data = _normalised_numpy(train)
        n, dim = data.shape
        if index == "flat":
            self.index = faiss.IndexFlatIP(dim)
        else:
            nlist = int(nlist) if nlist is not None else max(1, min(int(4 * math.sqrt(n)), n // 39 or 1))
            if not 1 <= nlist <= n:
                raise SelfsupError(f"kNN nlist must lie in [1, {n}] (the training-set size), got {nlist}")
            if nprobe < 1:
                raise SelfsupError(f"kNN nprobe must be a positive integer, got {nprobe}")
            self.quantizer = faiss.IndexFlatIP(dim)  # kept referenced: the IVF index does not own it
            self.index = faiss.IndexIVFFlat(self.quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            self.index.cp.seed = 1234  # deterministic k-means
            self.index.train(data)
            self.index.nprobe = min(int(nprobe), nlist)
        self.index.add(data)

    def __call__(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        sims, neighbours = self.index.search(_normalised_numpy(queries), k)
        return torch.from_numpy(sims), torch.from_numpy(neighbours)


class _TorchSearch:
    """Exact inner-product search by matrix product and ``topk`` on ``device`` (the GPU path)."""

    def __init__(self, train: torch.Tensor, device: torch.device):
        self.train = F.normalize(train.detach().float().to(device), dim=1)
        self.device = device

    def __call__(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        q = F.normalize(queries.detach().float().to(self.device), dim=1)
        return torch.topk(q @ self.train.T, k, dim=1, largest=True, sorted=True)


def knn_classify(
    train_features: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    test_features: torch.Tensor | np.ndarray,
    test_labels: torch.Tensor | np.ndarray,
    *,
    ks: Sequence[int] | int = (20, 200),
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 2048,
    backend: str = "auto",
    index: str = "flat",
    nlist: int | None = None,
    nprobe: int = 16,
    device: torch.device | str | None = None,
) -> dict[str, dict[str, float]]:
    """Weighted kNN top-1 / top-5 accuracy (Wu et al. 2018, see the module docstring).

    One search over L2-normalised features (inner product = cosine similarity) finds the
    ``max(ks)`` nearest training features of each test feature; each k uses the first k of
    them. A k larger than the training set is clipped to its size N. The test set is searched
    ``chunk_size`` rows at a time, so memory stays O(chunk_size * (max(ks) + C)) beyond the
    features themselves (the torch backend also holds a chunk's [rows, N] similarities, with
    rows reduced so that this stays under 256 MiB). Ties between class votes go to the lower
    class index (see :func:`true_class_rank`).

    Args:
        train_features: [N, D] floats. train_labels: [N] integers in [0, C).
        test_features: [M, D] floats. test_labels: [M] integers in [0, C).
        ks: neighbour counts to evaluate.
        temperature: T in the vote weight ``exp(s / T)``.
        num_classes: C; default ``1 + the largest label`` seen.
        chunk_size: test rows per search.
        backend: ``faiss`` (CPU), ``torch`` (matrix product + topk, on ``device``) or ``auto``:
            torch when the search device is a GPU and the index is flat, else faiss.
        index: ``flat`` (exact, the default) or ``ivf`` (faiss inverted file: approximate, for
            millions of training features).
        nlist: IVF cells (default ``4 * sqrt(N)``, at most N / 39 so that k-means has 39 points
            per cell). nprobe: IVF cells scanned per query (``nprobe >= nlist`` is exact).
        device: where the torch backend runs; default: the features' device if a GPU, else the
            first GPU when there is one, else the CPU.

    Returns:
        ``{"knn_k{k}": {"top1": float, "top5": float, "k": effective k, "temperature": T}}``
        for each requested k (the key keeps the requested k; ``"k"`` is the clipped one).
    """
    ks = _check_knn_args(ks, temperature, chunk_size)
    source = torch.as_tensor(train_features)
    x_train, y_train, x_test, y_test, classes = prepare_labelled_features(
        train_features, train_labels, test_features, test_labels, num_classes
    )
    backend, run_device = _resolve_backend(backend, index, device, source)
    effective = {k: min(k, x_train.shape[0]) for k in ks}
    k_max = max(effective.values())
    if backend == "torch":
        search = _TorchSearch(x_train, run_device)
        chunk_size = max(1, min(chunk_size, 2**26 // x_train.shape[0]))
    else:
        search = _FaissSearch(x_train, index, nlist, nprobe)
    y_train, y_test = y_train.to(run_device), y_test.to(run_device)
    top1 = {k: 0 for k in ks}
    top5 = {k: 0 for k in ks}
    for start in range(0, x_test.shape[0], chunk_size):
        sims, neighbours = search(x_test[start : start + chunk_size], k_max)
        sims, neighbours = sims.to(run_device), neighbours.to(run_device)
        # An IVF search whose probed cells hold fewer than k_max points pads with index -1 and
        # similarity -3.4e38, whose weight exp((s - s_max) / T) is exactly 0: no vote.
        neighbour_labels = y_train[neighbours.clamp_min(0)]
        labels = y_test[start : start + chunk_size]
        for k in ks:
            kk = effective[k]
            votes = _class_votes(sims[:, :kk], neighbour_labels[:, :kk], temperature, classes)
            rank = true_class_rank(votes, labels)
            top1[k] += int((rank < 1).sum())
            top5[k] += int((rank < 5).sum())
    m = x_test.shape[0]
    return {
        f"knn_k{k}": {"top1": top1[k] / m, "top5": top5[k] / m, "k": effective[k], "temperature": temperature}
        for k in ks
    }


def _normalised_numpy(features: torch.Tensor) -> np.ndarray:
    """[B, D] tensor -> L2-normalised C-contiguous float32 numpy array (zero rows stay zero)."""
    return np.ascontiguousarray(F.normalize(features.detach().float().cpu(), dim=1).numpy())
