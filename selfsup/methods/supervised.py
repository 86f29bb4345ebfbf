"""Supervised baseline: any backbone + a linear classifier, trained on the labels.

The reference row of every benchmark table: the same backbone, data, trainer and evaluation as
the self-supervised methods, but trained on the labels. One view per image (random resized crop +
horizontal flip, no colour augmentation), backbone features -> dropout (Srivastava et al. 2014,
JMLR 15) -> linear layer -> cross-entropy with optional label smoothing (Szegedy et al. 2016,
arXiv:1512.00567, sec. 7) or the multiclass SVM hinge: Weston & Watkins (ESANN 1999; the default) or
Crammer & Singer (JMLR 2001), ``method.hinge_form``.

``encoder`` is the backbone (exported and probed like any SSL encoder); the head's own accuracy is
reported as the ``classifier`` protocol through :meth:`Supervised.classify`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.config import MethodConfig, bounded
from selfsup.core.errors import ConfigError
from selfsup.data.augment import AugmentSpec
from selfsup.losses import multiclass_hinge
from selfsup.methods.base import Method
from selfsup.methods.factory import register_method


@dataclass
class SupervisedConfig(MethodConfig):
    name: str = "supervised"
    loss: Literal["cross_entropy", "hinge"] = "cross_entropy"
    label_smoothing: float = 0.0  # cross_entropy only
    margin: float = bounded(1.0, ge=0)  # hinge only
    # hinge only: sum over the wrong classes (Weston & Watkins 1999) or the worst one only (Crammer & Singer 2001)
    hinge_form: Literal["weston_watkins", "crammer_singer"] = "weston_watkins"
    dropout: float = 0.0  # on the features, before the linear head
    # random resized crop; (1, 1) keeps the whole image
    crop_scale: tuple[float, float] = bounded((0.35, 1.0), gt=0, le=1, pair=True)
    hflip_p: float = bounded(0.5, ge=0, le=1)  # 0 for data that is not mirror-symmetric (digits)


@register_method("supervised")
class Supervised(Method):
    """Supervised baseline: backbone + dropout (Srivastava et al. 2014) + linear head on the labels.

    Loss: cross-entropy with optional label smoothing (Szegedy et al. 2016, arXiv:1512.00567, sec. 7) or the
    multiclass SVM hinge (:func:`~selfsup.losses.multiclass_hinge`): Weston & Watkins (ESANN 1999, the default) or
    Crammer & Singer (JMLR 2001), ``method.hinge_form``.

    Shapes: ``views`` one float ``[B, C, H, W]``; features ``[B, num_features]``; ``classify(x)`` gives the
    logits ``[B, num_classes]``. ``encoder`` is the backbone.
    """

    config_class = SupervisedConfig
    uses_labels = True
    paper = "supervised baseline: linear head, cross-entropy (label smoothing) or multiclass hinge"
    sync_bn_default = False  # a per-sample loss: per-process BN statistics (plain data-parallel training)

    def __init__(self, cfg: SupervisedConfig, backbone: nn.Module, image_size: int, num_classes: int = 0):
        super().__init__(cfg, backbone, image_size, num_classes)
        if num_classes < 2:
            raise ConfigError(f"method.name=supervised needs labelled data with at least 2 classes, got {num_classes}")
        if not 0.0 <= cfg.label_smoothing < 1.0:
            raise ConfigError(f"method.label_smoothing={cfg.label_smoothing} must lie in [0, 1)")
        if not 0.0 <= cfg.dropout < 1.0:
            raise ConfigError(f"method.dropout={cfg.dropout} must lie in [0, 1)")
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(backbone.num_features, num_classes)

    @property
    def views(self) -> list[tuple[AugmentSpec, int]]:
        """One crop + flip view; float (non-image) data passes through the view maker unchanged."""
        spec = AugmentSpec(size=self.image_size, crop_scale=tuple(self.cfg.crop_scale), hflip_p=self.cfg.hflip_p,
                           jitter_p=0.0, grayscale_p=0.0)
        return [(spec, 1)]

    def classify(self, x: Tensor) -> Tensor:
        """Normalised inputs [B, C, H, W] -> class logits [B, num_classes]."""
        return self.head(self.dropout(self.backbone(x)))

    def training_step(self, views: list[Tensor], labels: Tensor, values: dict[str, float]) -> dict[str, Tensor]:
        """``views``: one [B, C, H, W]; returns the loss and the batch's training top-1."""
        logits = self.classify(views[0])
        if self.cfg.loss == "hinge":
            loss = multiclass_hinge(logits, labels, self.cfg.margin, form=self.cfg.hinge_form)
        else:
            loss = F.cross_entropy(logits, labels, label_smoothing=self.cfg.label_smoothing)
        with torch.no_grad():
            top1 = (logits.argmax(dim=1) == labels).float().mean()
        return {"loss": loss, "train_top1": top1}
