"""Evaluation protocols on frozen features: extract once, run kNN and the linear probe on the cache."""
from __future__ import annotations

from typing import Iterable

from torch import Tensor, nn

from selfsup.config import EvalConfig
from selfsup.data import ImageDataset
from selfsup.errors import DataError
from selfsup.evaluation.features import extract_features
from selfsup.evaluation.knn import knn_classify
from selfsup.evaluation.linear import linear_probe

PROTOCOLS = ("knn", "linear")


class _Classify(nn.Module):
    """A model's ``classify(x) -> logits [B, K]`` as a plain forward, so logits are extracted like features."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.classify(x)


def evaluate(encoder: nn.Module, train: ImageDataset, val: ImageDataset, cfg: EvalConfig, *,
             protocols: Iterable[str] | None = None, device=None, progress: bool = True,
             classifier: nn.Module | None = None) -> dict[str, dict]:
    """Run ``protocols`` (default: kNN, plus the linear probe if ``cfg.linear``) on ``encoder``.

    Both splits are normalised with the training split's statistics, as in training.
    ``classifier``: a trained model with ``classify(x) -> logits`` (a supervised baseline); its own
    top-1 on ``val`` is added as ``"classifier"``.
    Returns ``{"knn_k20": {"top1": ..}, "knn_k200": {..}, "linear": {..}[, "classifier": {..}]}``.
    """
    protocols = list(protocols or (["knn", "linear"] if cfg.linear else ["knn"]))
    if list(train.classes) != list(val.classes):  # label i would mean different classes in the two splits
        only = sorted(set(train.classes) ^ set(val.classes))
        raise DataError(f"the training and evaluation splits have different classes ({len(train.classes)} vs "
                        f"{len(val.classes)}; in one only: {', '.join(only[:5]) or 'same names, other order'}): "
                        "labels would not match")
    features = {
        name: extract_features(encoder, data.images, train.mean, train.std, batch_size=cfg.batch_size,
                               device=device, progress=progress)
        for name, data in (("train", train), ("val", val))
    }
    results: dict[str, dict] = {}
    num_classes = len(train.classes)
    if "knn" in protocols:
        results.update(knn_classify(features["train"], train.labels, features["val"], val.labels,
                                    ks=tuple(cfg.knn_k), temperature=cfg.knn_temperature, num_classes=num_classes))
    if "linear" in protocols:
        results.update(linear_probe(features["train"], train.labels, features["val"], val.labels,
                                    num_classes=num_classes, progress=progress))
    if classifier is not None:
        logits = extract_features(_Classify(classifier), val.images, train.mean, train.std, batch_size=cfg.batch_size,
                                  device=device, progress=progress)
        results["classifier"] = {"top1": float((logits.argmax(dim=1) == val.labels).float().mean())}
    return results


def format_table(rows: dict[str, dict[str, dict]]) -> str:
    """A plain-text table of top-1 accuracies: one row per encoder, one column per protocol."""
    columns = sorted({key for result in rows.values() for key in result}, key=_column_order)
    width = max(len(name) for name in rows) + 2
    lines = ["top-1".ljust(width) + "".join(c.rjust(12) for c in columns)]
    for name, result in rows.items():
        cells = "".join((f"{result[c]['top1']:.4f}" if c in result else "-").rjust(12) for c in columns)
        lines.append(name.ljust(width) + cells)
    return "\n".join(lines)


def _column_order(name: str) -> tuple:
    return (name.startswith("linear"), len(name), name)
