"""BYOL: Bootstrap Your Own Latent.

Grill et al., "Bootstrap your own latent: A new approach to self-supervised learning",
NeurIPS 2020 (arXiv:2006.07733). Algorithm 1:
two views -> online network (encoder f, projector g, predictor q) and target network (f', g',
an exponential moving average of f and g) -> normalised MSE between q(g(f(v))) and the target's
g'(f'(v')) of the other view, symmetrised; only the online network is trained, then
``xi <- tau xi + (1 - tau) theta`` with tau rising from tau_base to 1 on a cosine (sec. 3.2).
The online encoder f is what gets evaluated.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from selfsup.config import MethodConfig, bounded
from selfsup.data.augment import AugmentSpec
from selfsup.losses.noncontrastive import byol_loss
from selfsup.methods.base import LrRule, Method
from selfsup.methods.factory import register_method
from selfsup.models.ema import ema_update, frozen_copy, momentum_schedule
from selfsup.models.heads import ProjectionHead


def byol_views(
    size: int, *, blur: bool | None = None, crop_scale: tuple[float, float] = (0.08, 1.0)
) -> list[tuple[AugmentSpec, int]]:
    """BYOL's two asymmetric views (Grill et al. 2020, appendix B, table 6), also used by
    Barlow Twins and VICReg: crop + flip, colour jitter (0.4, 0.4, 0.2, 0.1) w.p. 0.8, grey
    w.p. 0.2; Gaussian blur w.p. 1.0 / 0.1 and solarisation w.p. 0.0 / 0.2 for view 1 / 2.

    ``blur=None`` blurs only from 64 px up (at 32 px a blur wipes out the image, as SimCLR notes).
    """
    use_blur = size >= 64 if blur is None else blur
    common = dict(size=size, crop_scale=tuple(crop_scale), jitter_p=0.8, brightness=0.4, contrast=0.4,
                  saturation=0.2, hue=0.1, grayscale_p=0.2)
    first = AugmentSpec(**common, blur_p=1.0 if use_blur else 0.0, solarize_p=0.0)
    second = AugmentSpec(**common, blur_p=0.1 if use_blur else 0.0, solarize_p=0.2)
    return [(first, 1), (second, 1)]


@dataclass
class BYOLConfig(MethodConfig):
    name: str = "byol"
    proj_hidden_dim: int = bounded(4096, ge=1)
    proj_dim: int = bounded(256, ge=1)
    pred_hidden_dim: int = bounded(4096, ge=1)
    momentum_base: float = bounded(0.996, ge=0, le=1)  # tau_base; the paper's ImageNet value (0.99 suits short runs)
    momentum_final: float = bounded(1.0, ge=0, le=1)
    crop_scale: tuple[float, float] = bounded((0.08, 1.0), gt=0, le=1, pair=True)
    blur: bool | None = None  # None: blur when the images are 64 px or larger
    # Multiplies the predictor's lr (the predictor's relative lr: Tian et al. 2021, arXiv:2102.06810).
    predictor_lr_scale: float = bounded(1.0, gt=0)


@register_method("byol")
class BYOL(Method):
    """BYOL, Bootstrap Your Own Latent (Grill et al., NeurIPS 2020, arXiv:2006.07733, Algorithm 1).

    An online network (backbone, projector, predictor) predicts a target network's projection of the other
    view; the target (backbone, projector) is an EMA of the online one with a cosine momentum schedule
    (``ema_momentum``). Loss: the symmetrised normalised MSE ``2 - 2 cos(p, z')``
    (:func:`~selfsup.losses.byol_loss`); no negatives.

    Shapes: ``views`` two float ``[B, C, S, S]``; features ``[B, num_features]`` and projections, predictions
    ``[B, proj_dim]`` per view. ``encoder`` is the online backbone.
    """

    config_class = BYOLConfig
    min_batch_size = 2  # the projector's BatchNorm needs a batch
    tiny = {"proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 32}
    paper = "Grill et al. 2020, arXiv:2006.07733"

    def __init__(self, cfg: BYOLConfig, backbone, image_size: int, num_classes: int = 0):
        super().__init__(cfg, backbone, image_size, num_classes)
        self.projector = ProjectionHead(backbone.num_features, cfg.proj_hidden_dim, cfg.proj_dim)
        self.predictor = ProjectionHead(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim)
        self.target_backbone = frozen_copy(backbone)
        self.target_projector = frozen_copy(self.projector)

    @property
    def lr_rules(self) -> dict[str, LrRule]:
        return {"predictor": LrRule(scale=self.cfg.predictor_lr_scale)} if self.cfg.predictor_lr_scale != 1.0 else {}

    @property
    def views(self) -> list[tuple[AugmentSpec, int]]:
        return byol_views(self.image_size, blur=self.cfg.blur, crop_scale=tuple(self.cfg.crop_scale))

    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        """``ema_momentum``: tau_k = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2."""
        return {"ema_momentum": momentum_schedule(self.cfg.momentum_base, self.cfg.momentum_final, total_steps)}

    def training_step(self, views, labels, values):
        # One call per view, as Algorithm 1 batches each view on its own: BatchNorm normalises a view
        # over its own batch (2-epoch CIFAR-10, LARS: kNN k=200 0.319 / 0.298 over 2 seeds vs 0.308
        # with both views in one batch; no measurable difference).
        h = [self.backbone(v) for v in views]
        z = [self.projector(x) for x in h]
        p1, p2 = (self.predictor(x) for x in z)
        with torch.no_grad():
            t1, t2 = (self.target_projector(self.target_backbone(v)) for v in views)
        loss = 0.5 * (byol_loss(p1, t2) + byol_loss(p2, t1))
        return {"loss": loss, "features": torch.cat(h).detach(), "embeddings": torch.cat(z).detach()}

    @torch.no_grad()
    def on_step_end(self, values: dict[str, float]) -> None:
        tau = values["ema_momentum"]
        ema_update(self.target_backbone, self.backbone, tau)
        ema_update(self.target_projector, self.projector, tau)
