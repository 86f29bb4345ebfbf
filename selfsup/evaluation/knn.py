"""Weighted k-nearest-neighbour classification on frozen features.

The protocol of Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination" (CVPR), also used by InstDisc/MoCo/DINO-style evaluations: features are
L2-normalised, the k training features with the highest cosine similarity ``s`` to a test
feature vote for their labels with weight ``exp(s / T)``, and the class with the largest
summed weight is the prediction.
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from selfsup.errors import DataError, SelfsupError

__all__ = ["knn_classify", "true_class_rank", "prepare_labelled_features"]


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
    votes = torch.zeros(sims.shape[0], num_classes, dtype=torch.float64)
    return votes.scatter_add_(1, neighbour_labels, weights)


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
) -> dict[str, dict[str, float]]:
    """Weighted kNN top-1 / top-5 accuracy (Wu et al. 2018, see the module docstring).

    One exact faiss search (``IndexFlatIP`` over L2-normalised features, i.e. cosine
    similarity) finds the ``max(ks)`` nearest training features of each test feature; each k
    uses the first k of them. A k larger than the training set is clipped to its size N.
    The test set is searched ``chunk_size`` rows at a time, so memory stays
    O(chunk_size * (max(ks) + C)) beyond the features themselves. Ties between class votes
    go to the lower class index (see :func:`true_class_rank`).

    Args:
        train_features: [N, D] floats. train_labels: [N] integers in [0, C).
        test_features: [M, D] floats. test_labels: [M] integers in [0, C).
        ks: neighbour counts to evaluate.
        temperature: T in the vote weight ``exp(s / T)``.
        num_classes: C; default ``1 + the largest label`` seen.
        chunk_size: test rows per faiss search.

    Returns:
        ``{"knn_k{k}": {"top1": float, "top5": float, "k": effective k, "temperature": T}}``
        for each requested k (the key keeps the requested k; ``"k"`` is the clipped one).
    """
    ks = _check_knn_args(ks, temperature, chunk_size)
    x_train, y_train, x_test, y_test, classes = prepare_labelled_features(
        train_features, train_labels, test_features, test_labels, num_classes
    )
    effective = {k: min(k, x_train.shape[0]) for k in ks}
    k_max = max(effective.values())

    index = faiss.IndexFlatIP(x_train.shape[1])
    index.add(_normalised_numpy(x_train))
    y_train = y_train.cpu()
    y_test = y_test.cpu()
    x_test = x_test.cpu()
    top1 = {k: 0 for k in ks}
    top5 = {k: 0 for k in ks}
    for start in range(0, x_test.shape[0], chunk_size):
        sims, neighbours = index.search(_normalised_numpy(x_test[start : start + chunk_size]), k_max)
        sims, neighbours = torch.from_numpy(sims), torch.from_numpy(neighbours)
        neighbour_labels = y_train[neighbours]
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
