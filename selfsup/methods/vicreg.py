"""VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised Learning.

Bardes, Ponce, LeCun, ICLR 2022 (arXiv:2105.04906). Algorithm 1:
two views (BYOL's augmentations) -> backbone -> expander ("3 linear layers, 8192 units, BN +
ReLU between them") -> ``lambda s(Z, Z') + mu [v(Z) + v(Z')] + nu [c(Z) + c(Z')]`` (eq. 6):
invariance (MSE), variance (hinge on each dimension's std) and covariance (off-diagonal squares)
terms over the global batch, reduced as the authors' code (variance averaged over the two
branches; see ``selfsup.losses.noncontrastive.vicreg_terms``). The backbone is what gets evaluated.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.augment import AugmentSpec
from selfsup.config import MethodConfig
from selfsup.heads import ProjectionHead
from selfsup.losses.noncontrastive import vicreg_terms
from selfsup.methods.base import Method
from selfsup.methods.byol import byol_views
from selfsup.methods.registry import register_method


@dataclass
class VICRegConfig(MethodConfig):
    name: str = "vicreg"
    sim_weight: float = 25.0  # lambda
    var_weight: float = 25.0  # mu
    cov_weight: float = 1.0  # nu
    proj_hidden_dim: int = 2048  # the paper's 8192 is for ResNet-50 on ImageNet
    proj_dim: int = 2048
    proj_layers: int = 3
    crop_scale: tuple[float, float] = (0.08, 1.0)
    blur: bool | None = None  # None: blur when the images are 64 px or larger


@register_method("vicreg")
class VICReg(Method):
    """Backbone + expander; the loss keeps every dimension's variance up and decorrelates them."""

    config_class = VICRegConfig
    min_batch_size = 2  # variance and covariance along the batch need at least two samples
    paper = "Bardes et al. 2022, arXiv:2105.04906"

    def __init__(self, cfg: VICRegConfig, backbone, image_size: int, num_classes: int = 0):
        super().__init__(cfg, backbone, image_size, num_classes)
        self.projector = ProjectionHead(backbone.num_features, cfg.proj_hidden_dim, cfg.proj_dim, num_layers=cfg.proj_layers)

    @property
    def views(self) -> list[tuple[AugmentSpec, int]]:
        return byol_views(self.image_size, blur=self.cfg.blur, crop_scale=tuple(self.cfg.crop_scale))

    def training_step(self, views, labels, values):
        z_a, z_b = self.projector(self.backbone(torch.cat(views))).chunk(2)  # one backbone call
        invariance, variance, covariance = vicreg_terms(z_a, z_b, gather=True)
        cfg = self.cfg
        loss = cfg.sim_weight * invariance + cfg.var_weight * variance + cfg.cov_weight * covariance
        return {"loss": loss, "invariance": invariance.detach(), "variance": variance.detach(),
                "covariance": covariance.detach()}
