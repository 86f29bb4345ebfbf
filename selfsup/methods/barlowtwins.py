"""Barlow Twins: Self-Supervised Learning via Redundancy Reduction.

Zbontar, Jing, Misra, LeCun, Deny, ICML 2021 (arXiv:2103.03230). Algorithm 1:
two views (BYOL's augmentations) -> backbone -> projector ("3 linear layers, 8192 units, BN +
ReLU between them") -> the cross-correlation matrix C of the batch-standardised embeddings ->
``sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2``. Standardisation and correlation use the
global batch (all processes). The backbone is what gets evaluated.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.augment import AugmentSpec
from selfsup.config import MethodConfig
from selfsup.heads import ProjectionHead
from selfsup.losses.noncontrastive import barlow_twins_loss
from selfsup.methods.base import Method
from selfsup.methods.byol import byol_views
from selfsup.methods.registry import register_method


@dataclass
class BarlowTwinsConfig(MethodConfig):
    name: str = "barlowtwins"
    lambd: float = 5e-3  # weight of the redundancy-reduction (off-diagonal) term
    proj_hidden_dim: int = 2048  # the paper's 8192 is for ResNet-50 on ImageNet
    proj_dim: int = 2048
    proj_layers: int = 3
    crop_scale: tuple[float, float] = (0.08, 1.0)
    blur: bool | None = None  # None: blur when the images are 64 px or larger


@register_method("barlowtwins")
class BarlowTwins(Method):
    """Backbone + projector; the loss decorrelates the projector's output dimensions."""

    config_class = BarlowTwinsConfig
    min_batch_size = 2  # standardising along the batch needs at least two samples
    paper = "Zbontar et al. 2021, arXiv:2103.03230"

    def __init__(self, cfg: BarlowTwinsConfig, backbone, image_size: int, num_classes: int = 0):
        super().__init__(cfg, backbone, image_size, num_classes)
        self.projector = ProjectionHead(backbone.num_features, cfg.proj_hidden_dim, cfg.proj_dim, num_layers=cfg.proj_layers)

    @property
    def views(self) -> list[tuple[AugmentSpec, int]]:
        return byol_views(self.image_size, blur=self.cfg.blur, crop_scale=tuple(self.cfg.crop_scale))

    def training_step(self, views, labels, values):
        z_a, z_b = self.projector(self.backbone(torch.cat(views))).chunk(2)  # one backbone call
        loss = barlow_twins_loss(z_a, z_b, self.cfg.lambd, gather=True)
        return {"loss": loss}
