"""SimSiam: Exploring Simple Siamese Representation Learning.

Chen & He, CVPR 2021 (arXiv:2011.10566). Algorithm 1:
two views -> encoder f (backbone + projection MLP) -> z1, z2; predictor h -> p1, p2;
``L = D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2`` with D the negative cosine
similarity. No negatives, no momentum encoder: the stop-gradient prevents collapse (sec. 4).
The backbone is what gets evaluated.

``predictor_fixed_lr``: the predictor keeps the peak learning rate, neither warmed up nor
decayed (sec. 4.2, table 1c: 68.1% vs 67.7% with a decayed one).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from selfsup.config import MethodConfig, bounded
from selfsup.data.augment import AugmentSpec
from selfsup.losses.noncontrastive import simsiam_loss
from selfsup.methods.base import LrRule, Method
from selfsup.methods.factory import register_method
from selfsup.models.heads import ProjectionHead


@dataclass
class SimSiamConfig(MethodConfig):
    name: str = "simsiam"
    proj_hidden_dim: int = bounded(2048, ge=1)
    proj_dim: int = bounded(2048, ge=1)
    proj_layers: int = bounded(3, ge=1)  # ImageNet: 3; the paper's CIFAR variant: 2 (both end in a BN without affine)
    pred_hidden_dim: int = bounded(512, ge=1)  # the bottleneck: a quarter of proj_dim
    crop_scale: tuple[float, float] = bounded((0.2, 1.0), gt=0, le=1, pair=True)  # MoCo v2's augmentation, as the paper
    blur: bool | None = None  # None: blur when the images are 64 px or larger
    predictor_fixed_lr: bool = False  # True: the predictor's lr stays at the peak (sec. 4.2)


@register_method("simsiam")
class SimSiam(Method):
    """SimSiam (Chen & He, CVPR 2021, arXiv:2011.10566, Algorithm 1).

    Two views -> encoder f (backbone + projection MLP) -> z; a bottleneck predictor h -> p; loss
    ``D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2`` with D the negative cosine similarity
    (:func:`~selfsup.losses.simsiam_loss`). No negatives, no momentum encoder.

    Shapes: ``views`` two float ``[B, C, S, S]``; features ``[2B, num_features]``; z and p ``[2B, proj_dim]``.
    ``encoder`` is the backbone.
    """

    config_class = SimSiamConfig
    min_batch_size = 2  # BatchNorm in the heads needs a batch
    tiny = {"proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 32}
    paper = "Chen & He 2021, arXiv:2011.10566"

    def __init__(self, cfg: SimSiamConfig, backbone, image_size: int, num_classes: int = 0):
        super().__init__(cfg, backbone, image_size, num_classes)
        self.projector = ProjectionHead(
            backbone.num_features, cfg.proj_hidden_dim, cfg.proj_dim, num_layers=cfg.proj_layers, last_bn=True
        )
        self.predictor = ProjectionHead(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim)

    @property
    def lr_rules(self) -> dict[str, LrRule]:
        return {"predictor": LrRule(fixed=True)} if self.cfg.predictor_fixed_lr else {}

    @property
    def views(self) -> list[tuple[AugmentSpec, int]]:
        # MoCo v2's views: jitter (0.4, 0.4, 0.4, 0.1) w.p. 0.8, grey w.p. 0.2, blur w.p. 0.5.
        spec = AugmentSpec.simclr(self.image_size, strength=0.5, blur=self.cfg.blur, crop_scale=tuple(self.cfg.crop_scale))
        return [(spec, 2)]

    def training_step(self, views, labels, values):
        h = self.backbone(torch.cat(views))  # one backbone call
        z = self.projector(h)  # [2B, proj_dim]
        p1, p2 = self.predictor(z).chunk(2)
        z1, z2 = z.chunk(2)
        loss = 0.5 * (simsiam_loss(p1, z2) + simsiam_loss(p2, z1))
        # Collapse monitor (sec. 4.1): the per-dimension std of l2-normalised z, ~1/sqrt(d) when healthy, 0 collapsed.
        z_std = F.normalize(z1.detach().float(), dim=1).std(dim=0).mean()
        return {"loss": loss, "z_std": z_std, "features": h.detach(), "embeddings": z.detach()}
