"""SupCon: Supervised Contrastive Learning.

Khosla, Teterwak, Wang, Sarna, Tian, Isola, Maschinot, Liu, Krishnan, NeurIPS 2020 (arXiv:2004.11362),
sec. 3: every image of the batch gets two augmented views (the "multiviewed batch") -> encoder ->
projection network (an MLP with one hidden layer of 2048 and a 128-d output, or a single linear layer)
-> L2-normalised embeddings -> L^sup_out (eq. 2): each view's positives are every other view of its
class in the global batch. Trained on the labels; the projection network is discarded afterwards and
the encoder is evaluated (the paper's second stage, a linear classifier, is the linear probe here).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.config import MethodConfig, bounded
from selfsup.core.errors import ConfigError
from selfsup.data.augment import AugmentSpec
from selfsup.losses import supcon_loss
from selfsup.methods.base import Method
from selfsup.methods.factory import register_method
from selfsup.methods.simclr import simclr_views
from selfsup.models.heads import ProjectionHead


@dataclass
class SupConConfig(MethodConfig):
    name: str = "supcon"
    temperature: float = bounded(0.1, gt=0)  # tau, the paper's; no base_temperature (see supcon_loss)
    proj_hidden_dim: int = bounded(2048, ge=1)
    proj_dim: int = bounded(128, ge=1)
    proj_layers: int = bounded(2, ge=1)  # 2: the paper's MLP (one hidden layer); 1: its single linear layer
    proj_last_bn: bool = False  # BN on the output, as simclr's option (the paper has none: it normalises)
    # SimCLR's augmentation ("SimAugment" in the paper), as simclr's keys
    crop_scale: tuple[float, float] = bounded((0.08, 1.0), gt=0, le=1, pair=True)
    color_strength: float = 0.5
    blur: bool | None = None


@register_method("supcon")
class SupCon(Method):
    """SupCon (Khosla et al. 2020, arXiv:2004.11362): SimCLR's pipeline with the labels choosing the positives.

    Two views of every image -> backbone -> projection head -> L^sup_out (:func:`~selfsup.losses.supcon_loss`,
    temperature ``method.temperature``) over the 2N normalised projections of the global batch, each view's
    positives being the other views of its class (its own other view included). With all labels distinct it
    is SimCLR's NT-Xent, so SimCLR, SupCon and the supervised baseline form a table on one backbone.

    Shapes: ``views`` two float ``[B, C, S, S]``; ``labels`` int64 ``[B]``; backbone features ``[2B, num_features]``;
    projections ``[2B, proj_dim]``. ``encoder`` is the backbone (the head is discarded, as in the paper).
    """

    config_class = SupConConfig
    uses_labels = True
    min_batch_size = 2  # as SimCLR: an anchor needs another sample to contrast with
    tiny = {"proj_hidden_dim": 32, "proj_dim": 16}
    paper = "Khosla et al. 2020, arXiv:2004.11362"

    def __init__(self, cfg: SupConConfig, backbone, image_size: int, num_classes: int = 0):
        super().__init__(cfg, backbone, image_size, num_classes)
        if num_classes < 2:
            raise ConfigError(f"method.name=supcon needs labelled data with at least 2 classes, got {num_classes}")
        self.head = ProjectionHead(backbone.num_features, cfg.proj_hidden_dim, cfg.proj_dim,
                                   num_layers=cfg.proj_layers, last_bn=cfg.proj_last_bn)

    @property
    def views(self) -> list[tuple[AugmentSpec, int]]:
        return simclr_views(self.image_size, self.cfg)

    def training_step(self, views, labels, values):
        h = self.backbone(torch.cat(views))  # one backbone call for both views
        z = self.head(h)
        loss = supcon_loss(z, torch.cat([labels, labels]), self.cfg.temperature, gather=True)
        return {"loss": loss, "features": h.detach(), "embeddings": z.detach()}
