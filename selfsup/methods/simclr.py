"""SimCLR: A Simple Framework for Contrastive Learning of Visual Representations.

Chen, Kornblith, Norouzi, Hinton, ICML 2020 (arXiv:2002.05709). Algorithm 1:
two augmented views of every image -> encoder f -> projection head g -> NT-Xent over the
2N projections, negatives from the whole (global) batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.config import MethodConfig, bounded
from selfsup.data.augment import AugmentSpec
from selfsup.losses import nt_xent
from selfsup.methods.base import Method
from selfsup.methods.factory import register_method
from selfsup.models.heads import ProjectionHead


def simclr_views(size: int, cfg) -> list[tuple[AugmentSpec, int]]:
    """SimCLR's two views from one spec (Chen et al. 2020, appendix A), also used by DCL / DCLW:
    crop + flip, colour jitter of strength ``cfg.color_strength`` w.p. 0.8, grey w.p. 0.2, blur from
    64 px up unless ``cfg.blur`` says otherwise; ``cfg.crop_scale`` bounds the crop area."""
    spec = AugmentSpec.simclr(size, strength=cfg.color_strength, blur=cfg.blur, crop_scale=tuple(cfg.crop_scale))
    return [(spec, 2)]


@dataclass
class SimCLRConfig(MethodConfig):
    name: str = "simclr"
    temperature: float = bounded(0.5, gt=0)
    proj_hidden_dim: int = bounded(2048, ge=1)
    proj_dim: int = bounded(128, ge=1)
    crop_scale: tuple[float, float] = bounded((0.08, 1.0), gt=0, le=1, pair=True)
    color_strength: float = 0.5  # s in the paper: jitter 0.8 s, hue 0.2 s (1.0 on ImageNet, 0.5 on CIFAR)
    blur: bool | None = None  # None: blur when the images are 64 px or larger (the paper skips it on CIFAR)
    proj_last_bn: bool = True  # BN on the head's output, as SimCLR's released code (see heads.ProjectionHead)


@register_method("simclr")
class SimCLR(Method):
    """SimCLR (Chen, Kornblith, Norouzi, Hinton, ICML 2020, arXiv:2002.05709, Algorithm 1).

    Two views of every image -> backbone f -> projection head g -> NT-Xent
    (:func:`~selfsup.losses.nt_xent`, temperature ``method.temperature``) over the 2N projections of the
    global batch: each projection's positive is the other view of its image, its negatives the other 2N - 2.

    Shapes: ``views`` two float ``[B, C, S, S]``; backbone features ``[2B, num_features]``; projections
    ``[2B, proj_dim]``. ``encoder`` is the backbone f (the head is discarded, as in the paper).
    """

    config_class = SimCLRConfig
    min_batch_size = 2  # a pair needs at least one negative
    tiny = {"proj_hidden_dim": 32, "proj_dim": 16}
    paper = "Chen et al. 2020, arXiv:2002.05709"

    def __init__(self, cfg: SimCLRConfig, backbone, image_size: int, num_classes: int = 0):
        super().__init__(cfg, backbone, image_size, num_classes)
        self.head = ProjectionHead(backbone.num_features, cfg.proj_hidden_dim, cfg.proj_dim, last_bn=cfg.proj_last_bn)

    @property
    def views(self) -> list[tuple[AugmentSpec, int]]:
        return simclr_views(self.image_size, self.cfg)

    def training_step(self, views, labels, values):
        h = self.backbone(torch.cat(views))  # one backbone call for both views
        z = self.head(h)
        z_a, z_b = z.chunk(2)
        loss = nt_xent(z_a, z_b, self.cfg.temperature, gather=True)
        return {"loss": loss, "features": h.detach(), "embeddings": z.detach()}
