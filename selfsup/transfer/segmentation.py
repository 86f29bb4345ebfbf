"""Semantic segmentation on an exported encoder: a linear probe on frozen features or a fine-tuned FCN head.

- ``model.head=linear`` (default, frozen encoder): BatchNorm + 1x1 convolution on the feature maps, each
  upsampled to the finest map and concatenated, logits upsampled bilinearly to the image: DINOv2's linear
  head (Oquab et al. 2023, sec. 7.4; their "+ms" variant concatenates several blocks, ``model.layers``);
- ``model.head=fcn`` (default regime ``full``): torchvision's FCN head (3x3 conv, BN, ReLU, dropout, 1x1
  conv; Long et al. 2015) on the same concatenated maps, the encoder fine-tuned at ``train.backbone_lr``.

Pixel-wise cross-entropy with ignore index 255; metrics on the val split: mIoU (mean over the classes that
occur in the ground truth or the prediction of IoU = TP / (TP + FP + FN)) and pixel accuracy, from one
confusion matrix over all val pixels (Everingham et al., PASCAL VOC). Training runs through
:func:`selfsup.transfer.loop.fit` (checkpoints, resume).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation.fcn import FCNHead

from selfsup.core.distributed import rank
from selfsup.core.errors import DataError
from selfsup.transfer.coco import load_voc
from selfsup.transfer.common import (apply_regime, keep_frozen_norms, make_optimizer, open_maps, output_dir,
                                     join_processes, resolve_device, synchronise_norms, write_config, write_json)
from selfsup.transfer.config import TransferConfig, parse_transfer_config
from selfsup.transfer.features import FeatureMaps
from selfsup.transfer.loop import check_not_finished, fit

__all__ = ["IGNORE_INDEX", "confusion_matrix", "segmentation_scores", "Segmenter", "run_segmentation"]

IGNORE_INDEX = 255


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """int64 ``[K, K]``: row = true class, column = predicted, over pixels whose target is not 255.
    ``pred`` and ``target`` are integer tensors of one shape (``[B, H, W]``)."""
    keep = target != IGNORE_INDEX
    t, p = target[keep].long(), pred[keep].long().clamp(0, num_classes - 1)
    return torch.bincount(t * num_classes + p, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def segmentation_scores(conf: Tensor) -> dict:
    """``mIoU``, ``pixel_accuracy`` and ``iou_per_class`` (None where a class is in neither truth nor
    prediction) from a confusion matrix."""
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    present = ~iou.isnan()
    return {"mIoU": float(iou[present].mean()) if present.any() else 0.0,
            "pixel_accuracy": float(tp.sum() / conf.sum().clamp(min=1)),
            "iou_per_class": [None if v != v else round(float(v), 6) for v in iou.tolist()]}


class Segmenter(nn.Module):
    """Feature maps + a dense head: float ``[B, C, H, W]`` (normalised) -> logits ``[B, K, H, W]``."""

    def __init__(self, maps: FeatureMaps, num_classes: int, head: str):
        super().__init__()
        self.maps = maps
        width = sum(maps.channels)
        self.head = nn.Sequential(nn.BatchNorm2d(width), nn.Conv2d(width, num_classes, 1)) if head == "linear" \
            else FCNHead(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        maps = list(self.maps(x).values())
        size = maps[0].shape[-2:]
        joined = torch.cat([m if m.shape[-2:] == size else
                            F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps], 1)
        return F.interpolate(self.head(joined), size=x.shape[-2:], mode="bilinear", align_corners=False)


def _normalise(images: Tensor, mean: Tensor, std: Tensor, device: torch.device) -> Tensor:
    return (images.to(device).float() / 255.0 - mean) / std


def evaluate(model: Segmenter, images: Tensor, masks: Tensor, num_classes: int, mean: Tensor, std: Tensor,
             device: torch.device, batch_size: int) -> dict:
    model.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            logits = model(_normalise(images[i:i + batch_size], mean, std, device))
            conf += confusion_matrix(logits.argmax(1).cpu(), masks[i:i + batch_size], num_classes)
    return segmentation_scores(conf)


def run_segmentation(encoder: str | Path, overrides: list[str] | TransferConfig) -> dict | None:
    """``selfsup transfer segmentation ENCODER key=value ...``: train the head (and the encoder, per regime) for
    ``train.steps`` steps on ``data.root``'s train split (resuming an interrupted run, refusing a finished one:
    :mod:`selfsup.transfer.loop`), evaluate on val, write ``metrics.json`` and ``config.yaml`` into the output
    folder; returns the metrics (on rank 0; the other processes of ``./launch.sh transfer`` train, then return
    None)."""
    cfg = overrides if isinstance(overrides, TransferConfig) else parse_transfer_config(overrides)
    out = output_dir(cfg, f"segmentation-{cfg.model.head}", encoder)
    check_not_finished(out, cfg)
    if not cfg.data.root:
        raise DataError("transfer segmentation needs data.root=DIR (VOC layout: JPEGImages, SegmentationClass, "
                        "ImageSets/Segmentation/{train,val}.txt)")
    join_processes(cfg.train.device)
    device = resolve_device(cfg.train.device)
    train_x, train_y = load_voc(cfg.data.root, "train", cfg.data.size)
    val_x, val_y = load_voc(cfg.data.root, "val", cfg.data.size)
    labelled = train_y[train_y != IGNORE_INDEX]
    num_classes = cfg.data.num_classes or (int(labelled.max()) + 1 if labelled.numel() else 0)
    if num_classes < 2:
        raise DataError(f"segmentation needs at least 2 classes, got {num_classes} (set data.num_classes)")
    too_big = int(labelled.max()) if labelled.numel() else 0
    if too_big >= num_classes:
        raise DataError(f"train masks hold class {too_big} but data.num_classes={num_classes}")
    maps, mean, std = open_maps(encoder, cfg)
    regime = cfg.model.regime or ("frozen" if cfg.model.head == "linear" else "full")
    torch.manual_seed(cfg.train.seed)
    model = Segmenter(maps, num_classes, cfg.model.head).to(device)
    backbone = apply_regime(maps, regime, cfg.model.train_stages)
    model = synchronise_norms(model, maps.encoder, cfg.model.norm, device)  # several processes: SyncBN
    opt = make_optimizer(model.head.parameters(), backbone, cfg)
    mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)

    def losses_of(picked: list[int]) -> dict:
        logits = model(_normalise(train_x[picked], mean_t, std_t, device))
        return {"loss": F.cross_entropy(logits, train_y[picked].to(device), ignore_index=IGNORE_INDEX)}

    def train_mode() -> None:
        model.train()
        keep_frozen_norms(maps, regime, cfg.model.norm)

    fitted = fit(model, opt, cfg, out, task="segmentation", encoder=encoder, num_items=len(train_x),
                 losses_of=losses_of, train_mode=train_mode)
    if rank() != 0:  # rank 0 alone evaluates and writes
        return None
    began = time.monotonic()
    scores = evaluate(model, val_x, val_y, num_classes, mean_t, std_t, device, max(cfg.train.batch_size, 16))
    result = {"task": "segmentation", "encoder": str(encoder), "init": cfg.model.init, "head": cfg.model.head,
              "regime": regime, "seed": cfg.train.seed, "steps": cfg.train.steps, "num_classes": num_classes,
              "image_size": list(train_x.shape[-2:]), "num_train": len(train_x), "num_val": len(val_x),
              "final_loss": fitted.losses.get("loss"), "resumed_from": fitted.resumed_from,
              "seconds": round(fitted.seconds + time.monotonic() - began, 2), **scores}
    write_config(out, cfg, "segmentation", encoder)
    write_json(out / "metrics.json", result)
    result["out"] = str(out)
    return result
