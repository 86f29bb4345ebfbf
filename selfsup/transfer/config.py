"""The ``selfsup transfer`` config: dotted ``key=value`` overrides, type-checked, unknown keys refused.

Keys (defaults in brackets)::

    data.root            scenes / VOC / COCO-like folder: JPEGImages/, SegmentationClass/,
                         ImageSets/Segmentation/{train,val}.txt, annotations/instances_{train,val}.json
    data.train, data.val             COCO JSON files (detection; default: under data.root)
    data.train_images, data.val_images  folders the JSON's file_name is relative to (default: data.root/JPEGImages)
    data.size            segmentation: resize to this side (0: keep); detection: the detector's min_size (0: the image's)
    data.num_classes     segmentation classes, background included (0: max label in the train masks + 1)
    model.init           pretrained | random (the same architecture, PyTorch's default initialisation)
    model.regime         frozen | last_k | full (default: frozen for the linear head, full otherwise)
    model.train_stages   k for last_k [1]
    model.norm           frozen | sync [frozen]: the encoder's BatchNorm statistics stay frozen (eval mode, as
                         today's small-batch fine-tuning, He et al. 2019) or train with the batch (``sync``: over
                         every process's share of the global batch, SyncBN, as MoCo's detection transfer; one
                         process: plain BN in train mode). ``sync`` trains the statistics of the BN layers whose
                         weights train (``model.regime``); a frozen encoder stays wholly frozen. The heads' own BN
                         layers (new, so never frozen) are synchronised whenever there are several processes.
    model.head           segmentation: linear (BN + 1x1 conv, DINOv2) | fcn (FCN head, Long et al. 2015) [linear]
    model.layers         feature indices (CNN stages / ViT blocks; default: every stage, or the ViT's last block)
    model.detector       auto | faster_rcnn | mask_rcnn | retinanet | fcos (auto: Mask R-CNN when the
                         annotations have masks, else Faster R-CNN; retinanet and fcos are box detectors:
                         on data with masks they train and report boxes only, no mask AP)
    model.fpn_channels   [64]; model.anchor_scale: anchor side = scale x stride [8] (not fcos: its
                         per-level box is the stride)
    train.steps [100], train.batch_size [8], train.lr (heads) [1e-3], train.backbone_lr [1e-4],
    train.weight_decay [1e-4], train.seed [0], train.device (auto | cpu | cuda) [auto]
    train.batch_size is the GLOBAL batch: with several processes (./launch.sh transfer TASK ENCODER ..., NPROC=2)
                         each takes its contiguous share of every step's pick (the count must divide it) and the
                         gradients are averaged; rank 0 alone writes, prints and evaluates
    train.checkpoint_every  steps between checkpoints in run.dir/checkpoints (0: only the last step's) [50];
                         rerunning the same command resumes from the newest
    run.dir              output folder [runs/transfer/TASK-ENCODER-INIT-sSEED; TASK: detection(-DETECTOR unless
                         auto) | segmentation-HEAD]
    run.overwrite        start a finished (metrics.json) or interrupted run over instead of refusing /
                         resuming it [false]
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Literal

from selfsup.config.loading import _check as check_value  # the training config's type checks, reused
from selfsup.config.loading import apply_override
from selfsup.core.errors import ConfigError

__all__ = ["TransferConfig", "parse_transfer_config"]


@dataclass
class TransferData:
    root: str | None = None
    train: str | None = None
    val: str | None = None
    train_images: str | None = None
    val_images: str | None = None
    size: int = 0
    num_classes: int = 0


@dataclass
class TransferModel:
    init: Literal["pretrained", "random"] = "pretrained"
    regime: Literal["frozen", "last_k", "full"] | None = None
    train_stages: int = 1
    norm: Literal["frozen", "sync"] = "frozen"
    head: Literal["linear", "fcn"] = "linear"
    layers: list[int] | None = None
    detector: Literal["auto", "faster_rcnn", "mask_rcnn", "retinanet", "fcos"] = "auto"
    fpn_channels: int = 64
    anchor_scale: float = 8.0


@dataclass
class TransferTrain:
    steps: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    backbone_lr: float = 1e-4
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 50


@dataclass
class TransferRun:
    dir: str | None = None
    overwrite: bool = False


@dataclass
class TransferConfig:
    data: TransferData = field(default_factory=TransferData)
    model: TransferModel = field(default_factory=TransferModel)
    train: TransferTrain = field(default_factory=TransferTrain)
    run: TransferRun = field(default_factory=TransferRun)


def parse_transfer_config(overrides: list[str]) -> TransferConfig:
    """Build a :class:`TransferConfig` from ``key=value`` items; one-line ConfigError for unknown keys or bad values."""
    raw: dict = {}
    for item in overrides:
        apply_override(raw, item)
    cfg = TransferConfig()
    valid = [f"{s.name}.{f.name}" for s in dataclasses.fields(cfg) for f in dataclasses.fields(getattr(cfg, s.name))]
    for section, values in raw.items():
        if section not in {s.name for s in dataclasses.fields(cfg)} or not isinstance(values, dict):
            raise ConfigError(f"unknown transfer config key '{section}'{_close(section, valid)}")
        target = getattr(cfg, section)
        hints = {f.name: f.type for f in dataclasses.fields(target)}
        types = _hints(type(target))
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(f"unknown transfer config key '{section}.{key}'{_close(f'{section}.{key}', valid)}")
            setattr(target, key, check_value(f"{section}.{key}", value, types[key]))
    for key in ("train.steps", "train.batch_size", "model.train_stages", "model.fpn_channels"):
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) < 1:
            raise ConfigError(f"config key '{key}' must be at least 1")
    if cfg.train.checkpoint_every < 0:
        raise ConfigError("config key 'train.checkpoint_every' must be at least 0 (0: only the last step's)")
    if cfg.train.lr <= 0 or cfg.train.backbone_lr < 0:
        raise ConfigError("train.lr must be > 0 and train.backbone_lr >= 0")
    return cfg


def _hints(cls: type) -> dict:
    import typing

    return typing.get_type_hints(cls)


def _close(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""
