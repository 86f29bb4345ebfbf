"""Object detection on an exported encoder: one of :mod:`selfsup.transfer.detectors` (``model.detector``:
Faster R-CNN, Ren et al. 2015; Mask R-CNN, He et al. 2017; RetinaNet, Lin et al. 2017; FCOS, Tian et al. 2019)
on the encoder's feature maps + an FPN (Lin et al. 2017). ``auto`` picks Mask R-CNN when the annotations hold
masks, else Faster R-CNN; ``retinanet`` and ``fcos`` are box detectors: on a dataset with masks they train on
the boxes alone and report box AP only (no ``segm`` entry).

Regimes as MoCo's transfer (He et al. 2020, sec. 4.2): ``frozen`` encoder, ``last_k`` stages, ``full``;
BatchNorm statistics stay frozen (small batches), or train over the global batch with ``model.norm=sync`` (SyncBN
over the processes of ``./launch.sh transfer``). Training runs through :func:`selfsup.transfer.loop.fit`
(checkpoints, resume, several processes). Evaluation: pycocotools' COCOeval on the val split (box, and mask with
Mask R-CNN): mAP@[.5:.95], AP50, AP75; the detections are written in COCO results format.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from selfsup.core.distributed import rank
from selfsup.core.errors import DataError
from selfsup.transfer.coco import CocoSplit, coco_evaluate, load_coco
from selfsup.transfer.common import (apply_regime, keep_frozen_norms, make_optimizer, open_maps, output_dir,
                                     join_processes, resolve_device, synchronise_norms, write_config, write_json)
from selfsup.transfer.config import TransferConfig, parse_transfer_config
from selfsup.transfer.detectors import MASK_DETECTORS, build_detector
from selfsup.transfer.loop import check_not_finished, fit

__all__ = ["build_detector", "detections_to_coco", "run_detection"]


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


def _batch(split: CocoSplit, ids: list[int], device: torch.device, targets: bool, masks: bool = False):
    """Float images in [0, 1] (``[3, H, W]`` each) and, with ``targets``, their detection targets (instance
    masks only with ``masks``: a box detector never reads them)."""
    images = [split.image(i).to(device).float() / 255.0 for i in ids]
    if not targets:
        return images, None
    return images, [{k: v.to(device) for k, v in split.target(i, masks=masks).items()} for i in ids]


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
            images, _ = _batch(val, ids, device, targets=False)
            for image_id, out in zip(ids, model(images)):
                b, s = detections_to_coco({k: v.cpu() for k, v in out.items()}, image_id, val.category_ids)
                boxes += b
                segm += s
    return boxes, segm


def run_detection(encoder: str | Path, overrides: list[str] | TransferConfig) -> dict | None:
    """``selfsup transfer detection ENCODER key=value ...``: fine-tune the detector for ``train.steps`` steps on
    the train split (resuming an interrupted run, refusing a finished one: :mod:`selfsup.transfer.loop`),
    evaluate on val with COCOeval; writes ``metrics.json``, ``config.yaml`` and ``detections_bbox.json``
    (``detections_segm.json`` with masks) into the output folder; returns the metrics (on rank 0; the other
    processes of ``./launch.sh transfer`` train, then return None)."""
    cfg = overrides if isinstance(overrides, TransferConfig) else parse_transfer_config(overrides)
    detector = cfg.model.detector
    out = output_dir(cfg, "detection" if detector == "auto" else f"detection-{detector}", encoder)
    check_not_finished(out, cfg)
    train_json, train_dir, val_json, val_dir = _paths(cfg)
    train, val = load_coco(train_json, train_dir, every_category=True), load_coco(val_json, val_dir)
    if train.category_ids != val.category_ids:
        raise DataError(f"{train_json} and {val_json} list different categories")
    if not train.coco.dataset.get("annotations"):
        raise DataError(f"{train_json} holds no annotations")
    kind = detector if detector != "auto" else "mask_rcnn" if train.has_masks else "faster_rcnn"
    masks = kind in MASK_DETECTORS
    if masks and not train.has_masks:
        raise DataError(f"model.detector={kind} but {train_json} has no masks")
    join_processes(cfg.train.device)
    device = resolve_device(cfg.train.device)
    maps, mean, std = open_maps(encoder, cfg)
    first = train.coco.imgs[train.image_ids[0]]
    min_size = cfg.data.size or min(first["height"], first["width"])
    torch.manual_seed(cfg.train.seed)
    model = build_detector(kind, maps, len(train.category_ids), mean=mean, std=std, min_size=min_size,
                           max_size=max(min_size, 1333 * min_size // 800), fpn_channels=cfg.model.fpn_channels,
                           anchor_scale=cfg.model.anchor_scale).to(device)
    regime = cfg.model.regime or "full"
    backbone = apply_regime(maps, regime, cfg.model.train_stages)
    model = synchronise_norms(model, maps.encoder, cfg.model.norm, device)  # several processes: SyncBN
    own = {id(p) for p in maps.encoder.parameters()}
    opt = make_optimizer([p for p in model.parameters() if id(p) not in own], backbone, cfg)

    def losses_of(picked: list[int]) -> dict:
        return model(*_batch(train, [train.image_ids[i] for i in picked], device, targets=True, masks=masks))

    def train_mode() -> None:
        model.train()
        keep_frozen_norms(maps, regime, cfg.model.norm)

    fitted = fit(model, opt, cfg, out, task="detection", encoder=encoder, num_items=len(train.image_ids),
                 losses_of=losses_of, train_mode=train_mode)
    if rank() != 0:  # rank 0 alone evaluates and writes
        return None
    began = time.monotonic()
    boxes, segm = _evaluate(model, val, device, max(1, cfg.train.batch_size))
    result = {"task": "detection", "detector": kind, "encoder": str(encoder), "init": cfg.model.init,
              "regime": regime, "seed": cfg.train.seed, "steps": cfg.train.steps, "num_train": len(train.image_ids),
              "num_val": len(val.image_ids), "min_size": min_size,
              "final_losses": {k: round(v, 5) for k, v in fitted.losses.items()}, "resumed_from": fitted.resumed_from,
              "seconds": round(fitted.seconds + time.monotonic() - began, 2), "bbox": coco_evaluate(val, boxes, "bbox")}
    if masks:
        result["segm"] = coco_evaluate(val, segm, "segm")
    write_config(out, cfg, "detection", encoder)
    write_json(out / "detections_bbox.json", boxes)
    if masks:
        write_json(out / "detections_segm.json", segm)
    write_json(out / "metrics.json", result)
    result["out"] = str(out)
    return result
