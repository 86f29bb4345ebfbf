"""Evaluation protocols: kNN and the linear probe on frozen features (extracted once), fine-tuning end to end."""
from __future__ import annotations

import warnings
from typing import Iterable

import torch
from torch import Tensor, nn

from selfsup.config import EvalConfig, FinetuneConfig
from selfsup.core.errors import DataError
from selfsup.data import Split
from selfsup.evaluation.features import cached_features, extract_features
from selfsup.evaluation.finetune import finetune
from selfsup.evaluation.knn import knn_classify
from selfsup.evaluation.linear import linear_probe

PROTOCOLS = ("knn", "linear", "finetune")


def finetune_key(cfg: FinetuneConfig) -> str:
    """The result's name in eval.json: ``finetune`` (whole encoder), ``finetune_last{k}`` (last k blocks;
    ``finetune_last0``: the head alone) or ``finetune_scratch`` (the random-init control)."""
    if cfg.from_scratch:
        return "finetune_scratch"
    return "finetune" if cfg.train_blocks < 0 else f"finetune_last{cfg.train_blocks}"


def match_channels(data: Split, in_chans: int | None) -> Split:
    """Grey images for a 3-channel encoder (transfer from colour data): repeat the channel (mean/std too)."""
    if in_chans is None or not data.is_image or data.shape[0] == in_chans:
        return data
    if data.shape[0] == 1 and in_chans == 3:
        return data.grey_to_rgb()
    raise DataError(f"the data have {data.shape[0]} channels but the encoder takes {in_chans}")


class _Classify(nn.Module):
    """A model's ``classify(x) -> logits [B, K]`` as a plain forward, so logits are extracted like features."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.classify(x)


def evaluate(encoder: nn.Module, train: Split, val: Split, cfg: EvalConfig, *,
             protocols: Iterable[str] | None = None, device=None, progress: bool = True,
             classifier: nn.Module | None = None, cache_dir=None, plots_dir=None, shard: bool = False,
             features: dict[str, Tensor] | None = None) -> dict[str, dict]:
    """Run ``protocols`` (default: kNN, plus the linear probe if ``cfg.linear``) on ``encoder``.

    Both splits are normalised with the training split's statistics, as in training; grey data meet a
    colour encoder as three equal channels. ``"finetune"`` trains a copy of the encoder with
    ``cfg.finetune`` (its result key: :func:`finetune_key`); ``encoder`` itself never changes.
    ``classifier``: a trained model with ``classify(x) -> logits`` (a supervised baseline); its own
    top-1 on ``val`` is added as ``"classifier"``.
    ``cache_dir``: keep the frozen features there and reuse them while encoder, data and transform are
    unchanged (:func:`~selfsup.evaluation.features.cached_features`). ``plots_dir``: write ``tsne.png``
    of the ``val`` features and, with the linear probe, ``confusion_linear.png`` there (needs matplotlib).
    ``shard``: extract the features over all processes (see :func:`evaluation_features`), every rank
    calling this; each then runs the protocols itself. ``features``: what :func:`evaluation_features`
    returned for the same arguments (e.g. every rank extracted together, and now rank 0 alone runs the
    protocols): nothing is extracted again.
    Returns ``{"knn_k20": {"top1": ..}, "knn_k200": {..}, "linear": {..}[, "finetune": {..}][, "classifier": {..}]}``.
    """
    protocols = _protocol_list(protocols, cfg)
    train, val = _matched_splits(encoder, train, val)
    if features is None:
        features = _frozen_features(encoder, train, val, cfg, protocols, device=device, progress=progress,
                                    classifier=classifier, cache_dir=cache_dir, shard=shard)
    predictions = None
    results: dict[str, dict] = {}
    num_classes = len(train.classes)
    if "knn" in protocols:
        results.update(knn_classify(features["train"], train.labels, features["val"], val.labels,
                                    ks=knn_ks(cfg.knn_k, len(train)), temperature=cfg.knn_temperature,
                                    num_classes=num_classes, index=cfg.knn_index))
    if "linear" in protocols:
        linear, probe = linear_probe(features["train"], train.labels, features["val"], val.labels,
                                     num_classes=num_classes, loss=cfg.linear_loss, solver=cfg.linear_solver,
                                     hinge_form=cfg.linear_hinge_form, progress=progress, return_probe=True)
        results.update(linear)
        predictions = probe.predict(features["val"])
    if "finetune" in protocols:
        if not (train.random_access and val.random_access):  # streamed: decoding in random order is too slow
            raise DataError("fine-tuning needs both splits in memory: raise data.in_memory_max_gb")
        results[finetune_key(cfg.finetune)] = finetune(encoder, train, val, cfg.finetune, device=device,
                                                       progress=progress, eval_batch_size=cfg.batch_size)
    if plots_dir is not None and "val" in features:
        from selfsup.evaluation.plots import write_eval_plots

        write_eval_plots(plots_dir, features["val"], val.labels, list(val.classes), predictions=predictions)
    if classifier is not None:
        logits = features["classifier"]
        results["classifier"] = {"top1": float((logits.argmax(dim=1) == val.labels).float().mean())}
    return results


def evaluation_features(encoder: nn.Module, train: Split, val: Split, cfg: EvalConfig, *,
                        protocols: Iterable[str] | None = None, device=None, progress: bool = True,
                        classifier: nn.Module | None = None, cache_dir=None, shard: bool = False) -> dict[str, Tensor]:
    """The frozen outputs :func:`evaluate` reads, for the same arguments: ``{"train": [N_train, D],
    "val": [N_val, D]}`` when kNN or the linear probe is asked for, plus ``"classifier"``: ``classifier``'s
    logits [N_val, K] on ``val``; float32 on the CPU. Fine-tuning needs none (it runs the encoder itself).

    ``shard``: every rank runs the encoder on its share of each split and gets all of the rows
    (:func:`~selfsup.evaluation.features.extract_features`); every rank must call it, with the same
    arguments, and only rank 0 reads or writes ``cache_dir``. The probes can then run on one rank
    (:func:`evaluate` with ``features=``), with no collective left for the others to wait on.
    """
    protocols = _protocol_list(protocols, cfg)
    train, val = _matched_splits(encoder, train, val)
    return _frozen_features(encoder, train, val, cfg, protocols, device=device, progress=progress,
                            classifier=classifier, cache_dir=cache_dir, shard=shard)


def _protocol_list(protocols: Iterable[str] | None, cfg: EvalConfig) -> list[str]:
    """``protocols``, or the default (kNN, plus the linear probe if ``cfg.linear``); unknown names raise."""
    protocols = list(protocols or (["knn", "linear"] if cfg.linear else ["knn"]))
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise DataError(f"unknown protocol {unknown[0]!r} (protocols: {', '.join(PROTOCOLS)})")
    return protocols


def knn_ks(ks: Iterable[int], train_size: int) -> list[int]:
    """The kNN's k values as used: each at most ``train_size`` (a k above it can only be ``train_size``), so
    results are keyed by the k used (``knn_k{k}``); one warning names those lowered. Distinct, in order."""
    ks = list(ks)
    lowered = [k for k in ks if k > train_size]
    if lowered:
        warnings.warn(f"eval.knn_k={ks}: a k above the {train_size} training images ({', '.join(map(str, lowered))}) "
                      f"is k={train_size}, reported as knn_k{train_size}", stacklevel=2)
    return list(dict.fromkeys(min(k, train_size) for k in ks))


def check_labels(split: Split, name: str) -> None:
    """Refuse a split without labels (``classes`` empty: an image folder without class sub-folders) in one line."""
    if not split.classes:
        raise DataError(f"evaluation needs labelled images, but the {name} split has none (an image folder without "
                        "class sub-folders): give data.train and data.val as folders of <class>/<image> folders")


def warn_if_one_class(train: Split) -> None:
    """One warning (once per process) when the training labels hold a single class: every classifier then
    predicts it, so every accuracy is 100% (or 0%) by construction."""
    present = torch.unique(train.labels)
    if len(present) == 1:
        warnings.warn(f"the training data hold one class ({train.classes[int(present[0])]!r}): every accuracy "
                      "(kNN, linear probe, online monitor) is 100% by construction, meaningless; "
                      "give labelled data of two classes or more")


def _matched_splits(encoder: nn.Module, train: Split, val: Split) -> tuple[Split, Split]:
    """Both splits with the encoder's channel count, labelled (one warning if of one class); their classes agree."""
    check_labels(train, "training")
    check_labels(val, "evaluation")
    warn_if_one_class(train)
    in_chans = (getattr(encoder, "selfsup_spec", None) or {}).get("in_chans")
    train, val = match_channels(train, in_chans), match_channels(val, in_chans)
    if list(train.classes) != list(val.classes):  # label i would mean different classes in the two splits
        only = sorted(set(train.classes) ^ set(val.classes))
        raise DataError(f"the training and evaluation splits have different classes ({len(train.classes)} vs "
                        f"{len(val.classes)}; in one only: {', '.join(only[:5]) or 'same names, other order'}): "
                        "labels would not match")
    return train, val


def _frozen_features(encoder: nn.Module, train: Split, val: Split, cfg: EvalConfig,
                     protocols: list[str], *, device, progress: bool, classifier: nn.Module | None, cache_dir,
                     shard: bool) -> dict[str, Tensor]:
    """:func:`evaluation_features` on splits already through :func:`_matched_splits`."""
    features = {
        name: cached_features(encoder, data, train.mean, train.std, cache_dir=cache_dir, labels=data.labels,
                              dataset_id=name, batch_size=cfg.batch_size, device=device, progress=progress,
                              shard=shard, pool=cfg.pool)
        for name, data in (("train", train), ("val", val))
    } if any(p in protocols for p in ("knn", "linear")) else {}
    if classifier is not None:
        features["classifier"] = extract_features(_Classify(classifier), val, train.mean, train.std,
                                                  batch_size=cfg.batch_size, device=device, progress=progress,
                                                  shard=shard)
    return features


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
