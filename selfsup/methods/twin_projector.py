"""The pipeline Barlow Twins and VICReg share: BYOL's two views -> one backbone call -> a
3-layer projector ("expander") whose two halves of output go to the method's loss.

Zbontar et al. 2021 (arXiv:2103.03230) and Bardes et al. 2022 (arXiv:2105.04906) both use
"3 linear layers, 8192 units, BN + ReLU between them"; 2048 suits ResNet-18 on small images.
The methods differ only in the loss, so each subclass implements ``training_step`` with
:meth:`TwinProjectorMethod.project`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.config import MethodConfig, bounded
from selfsup.data.augment import AugmentSpec
from selfsup.methods.base import Method
from selfsup.methods.byol import byol_views
from selfsup.models.heads import ProjectionHead


@dataclass
class TwinProjectorConfig(MethodConfig):
    proj_hidden_dim: int = bounded(2048, ge=1)  # the papers' 8192 is for ResNet-50 on ImageNet
    proj_dim: int = bounded(2048, ge=1)
    proj_layers: int = bounded(3, ge=1)
    crop_scale: tuple[float, float] = bounded((0.08, 1.0), gt=0, le=1, pair=True)
    blur: bool | None = None  # None: blur when the images are 64 px or larger


class TwinProjectorMethod(Method):
    """Backbone + projector over BYOL's two views; subclasses add the loss."""

    min_batch_size = 2  # statistics along the batch need at least two samples
    tiny = {"proj_hidden_dim": 32, "proj_dim": 16}

    def __init__(self, cfg: TwinProjectorConfig, backbone, image_size: int, num_classes: int = 0):
        super().__init__(cfg, backbone, image_size, num_classes)
        self.projector = ProjectionHead(backbone.num_features, cfg.proj_hidden_dim, cfg.proj_dim, num_layers=cfg.proj_layers)

    @property
    def views(self) -> list[tuple[AugmentSpec, int]]:
        return byol_views(self.image_size, blur=self.cfg.blur, crop_scale=tuple(self.cfg.crop_scale))

    def project(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Two views [B, C, H, W] each -> their projections [B, proj_dim] each (one backbone call), and the
        online monitor's detached ``{"features": [2B, D], "embeddings": [2B, proj_dim]}``."""
        h = self.backbone(torch.cat(views))
        z = self.projector(h)
        z_a, z_b = z.chunk(2)
        return z_a, z_b, {"features": h.detach(), "embeddings": z.detach()}
