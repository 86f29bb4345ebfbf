"""Object detection on an exported encoder: torchvision's Faster R-CNN (Ren et al. 2015) with an FPN
(Lin et al. 2017) on the encoder's feature maps, Mask R-CNN (He et al. 2017) when the annotations hold masks.

The encoder's maps (:mod:`selfsup.transfer.features`) go through torchvision's FPN; anchors are one size per
level, ``model.anchor_scale x stride`` (torchvision's defaults are 8 x stride: 32 px at stride 4), three aspect
ratios. Regimes as MoCo's transfer (He et al. 2020, sec. 4.2): ``frozen`` encoder, ``last_k`` stages, ``full``;
BatchNorm statistics stay frozen (small batches). Evaluation: pycocotools' COCOeval on the val split (box, and
mask with Mask R-CNN): mAP@[.5:.95], AP50, AP75; the detections are written in COCO results format.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from selfsup.core.errors import DataError
from selfsup.core.progress import progress_bar
from selfsup.transfer.coco import CocoSplit, coco_evaluate, load_coco
from selfsup.transfer.common import (apply_regime, keep_frozen_norms, make_optimizer, open_maps, output_dir,
                                     resolve_device, write_config, write_json)
from selfsup.transfer.config import TransferConfig, parse_transfer_config
from selfsup.transfer.features import FeatureMaps, WithFPN

__all__ = ["build_detector", "detections_to_coco", "run_detection"]


def build_detector(maps: FeatureMaps, num_classes: int, *, masks: bool, mean: list[float], std: list[float],
                   min_size: int, max_size: int, fpn_channels: int = 64, anchor_scale: float = 8.0) -> nn.Module:
    """Faster R-CNN (or Mask R-CNN with ``masks``) on ``maps`` + FPN; ``num_classes`` without the background.
    The detector's transform normalises with the export's ``mean`` / ``std`` and resizes to ``min_size``. The heads
    scale with the FPN's width ``c``: a box MLP of width ``4c``, a mask head of four ``c``-wide 3x3 convs (at
    ``c = 256`` torchvision's defaults: 1024 and 256)."""
    backbone = WithFPN(maps, fpn_channels)
    sizes = tuple((max(1, int(round(anchor_scale * s))),) for s in backbone.strides)
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    kwargs = dict(rpn_anchor_generator=anchors, min_size=min_size, max_size=max_size,
                  image_mean=mean, image_std=std,
                  box_roi_pool=MultiScaleRoIAlign(list(maps.names), output_size=7, sampling_ratio=2),
                  box_head=TwoMLPHead(fpn_channels * 7 * 7, 4 * fpn_channels),
                  box_predictor=FastRCNNPredictor(4 * fpn_channels, num_classes + 1))
    if masks:
        return MaskRCNN(backbone, mask_roi_pool=MultiScaleRoIAlign(list(maps.names), 14, 2),
                        mask_head=MaskRCNNHeads(fpn_channels, (fpn_channels,) * 4, 1),
                        mask_predictor=MaskRCNNPredictor(fpn_channels, fpn_channels, num_classes + 1), **kwargs)
    return FasterRCNN(backbone, **kwargs)


def detections_to_coco(output: dict, image_id: int, category_ids: list[int]) -> tuple[list[dict], list[dict]]:
    """torchvision's output for one image -> COCO results (boxes; masks when present, as RLE at 0.5)."""
    from pycocotools import mask as mask_utils

    boxes, rows, segm = output["boxes"].tolist(), [], []
    for k, ((x1, y1, x2, y2), label, score) in enumerate(zip(boxes, output["labels"].tolist(),
                                                             output["scores"].tolist())):
        row = {"image_id": int(image_id), "category_id": int(category_ids[label - 1]),
               "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)], "score": round(score, 5)}
        rows.append(row)
        if "masks" in output:
            m = (output["masks"][k, 0] > 0.5).numpy().astype(np.uint8)
            rle = mask_utils.encode(np.asfortranarray(m))
            rle["counts"] = rle["counts"].decode("ascii")
            segm.append({**row, "segmentation": rle})
    return rows, segm


def _batch(split: CocoSplit, ids: list[int], device: torch.device, with_targets: bool):
    images = [split.image(i).to(device).float() / 255.0 for i in ids]
    if not with_targets:
        return images, None
    return images, [{k: v.to(device) for k, v in split.target(i).items()} for i in ids]


def _paths(cfg: TransferConfig) -> tuple[Path, Path, Path, Path]:
    root = Path(cfg.data.root).expanduser() if cfg.data.root else None
    if root is None and not (cfg.data.train and cfg.data.val):
        raise DataError("transfer detection needs data.root=DIR or data.train=TRAIN.json data.val=VAL.json")

    def pick(value, default):
        if value:
            return Path(value).expanduser()
        if root is None:
            raise DataError("set data.train_images and data.val_images (the folders file_name is relative to)")
        return root / default

    return (pick(cfg.data.train, "annotations/instances_train.json"), pick(cfg.data.train_images, "JPEGImages"),
            pick(cfg.data.val, "annotations/instances_val.json"), pick(cfg.data.val_images, "JPEGImages"))


def _evaluate(model: nn.Module, val: CocoSplit, device: torch.device, batch_size: int) -> tuple[list, list]:
    model.eval()
    boxes, segm = [], []
    with torch.no_grad():
        for i in range(0, len(val.image_ids), batch_size):
            ids = val.image_ids[i:i + batch_size]
            images, _ = _batch(val, ids, device, with_targets=False)
            for image_id, out in zip(ids, model(images)):
                b, s = detections_to_coco({k: v.cpu() for k, v in out.items()}, image_id, val.category_ids)
                boxes += b
                segm += s
    return boxes, segm


def run_detection(encoder: str | Path, overrides: list[str] | TransferConfig) -> dict:
    """``selfsup transfer detection ENCODER key=value ...``: fine-tune the detector for ``train.steps`` steps on
    the train split, evaluate on val with COCOeval; writes ``metrics.json``, ``config.yaml`` and
    ``detections_bbox.json`` (``detections_segm.json`` with masks) into the output folder; returns the metrics."""
    cfg = overrides if isinstance(overrides, TransferConfig) else parse_transfer_config(overrides)
    train_json, train_dir, val_json, val_dir = _paths(cfg)
    train, val = load_coco(train_json, train_dir), load_coco(val_json, val_dir)
    if train.category_ids != val.category_ids:
        raise DataError(f"{train_json} and {val_json} list different categories")
    if not train.coco.dataset.get("annotations"):
        raise DataError(f"{train_json} holds no annotations")
    masks = cfg.model.detector == "mask_rcnn" or (cfg.model.detector == "auto" and train.has_masks)
    if masks and not train.has_masks:
        raise DataError(f"model.detector=mask_rcnn but {train_json} has no masks")
    device = resolve_device(cfg.train.device)
    maps, mean, std = open_maps(encoder, cfg)
    first = train.coco.imgs[train.image_ids[0]]
    min_size = cfg.data.size or min(first["height"], first["width"])
    torch.manual_seed(cfg.train.seed)
    model = build_detector(maps, len(train.category_ids), masks=masks, mean=mean, std=std, min_size=min_size,
                           max_size=max(min_size, 1333 * min_size // 800), fpn_channels=cfg.model.fpn_channels,
                           anchor_scale=cfg.model.anchor_scale).to(device)
    regime = cfg.model.regime or "full"
    backbone = apply_regime(maps, regime, cfg.model.train_stages)
    own = {id(p) for p in maps.encoder.parameters()}
    opt = make_optimizer([p for p in model.parameters() if id(p) not in own], backbone, cfg)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    start, losses = time.monotonic(), {}
    bar = progress_bar(total=cfg.train.steps, desc="detection", unit="step")
    for step in range(cfg.train.steps):
        model.train()
        keep_frozen_norms(maps, regime)
        pick = torch.randint(len(train.image_ids), (min(cfg.train.batch_size, len(train.image_ids)),), generator=gen)
        images, targets = _batch(train, [train.image_ids[i] for i in pick.tolist()], device, with_targets=True)
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        opt.scheduler.step()
        bar.update(1)
        if step % 10 == 0 or step == cfg.train.steps - 1:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    out = output_dir(cfg, "detection", encoder)
    boxes, segm = _evaluate(model, val, device, max(1, cfg.train.batch_size))
    result = {"task": "detection", "detector": "mask_rcnn" if masks else "faster_rcnn", "encoder": str(encoder),
              "init": cfg.model.init, "regime": regime, "seed": cfg.train.seed, "steps": cfg.train.steps,
              "num_train": len(train.image_ids), "num_val": len(val.image_ids), "min_size": min_size,
              "final_losses": {k: round(float(v.detach()), 5) for k, v in losses.items()},
              "seconds": round(time.monotonic() - start, 2), "bbox": coco_evaluate(val, boxes, "bbox")}
    if masks:
        result["segm"] = coco_evaluate(val, segm, "segm")
    write_config(out, cfg, "detection", encoder)
    write_json(out / "detections_bbox.json", boxes)
    if masks:
        write_json(out / "detections_segm.json", segm)
    write_json(out / "metrics.json", result)
    result["out"] = str(out)
    return result
