"""MoCo v3: momentum contrast without a queue, for ViTs (and ResNets).

Chen, Xie, He, "An Empirical Study of Training Self-Supervised Vision Transformers", ICCV 2021
(arXiv:2104.02057), Algorithm 1:

    f_q = backbone + projector (3-layer MLP) + predictor (2-layer MLP)      trained
    f_k = backbone + projector, the momentum copy of f_q's first two parts   never trained
    q1, q2 = f_q(x1), f_q(x2);  k1, k2 = f_k(x1), f_k(x2)
    loss = ctr(q1, k2) + ctr(q2, k1)        ctr: InfoNCE against the keys of the global batch, times 2t
    after the optimizer step: f_k <- m f_k + (1 - m) f_q, m rising from 0.99 to 1 on a cosine

Every MLP layer has BN (the outputs' without affine parameters), sec. 4 of the paper; with several
processes the trainer synchronises it (``trainer.sync_bn``, on by default), as the paper's SyncBN. For a ViT,
the stability trick of sec. 5.1 (``freeze_patch_embed``: the patch projection keeps its random weights) and
the fixed 2-D sin-cos position embedding are on by default. The views are BYOL's (the paper's appendix).
``encoder`` is the query backbone f_q (the paper's linear probes use it).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from selfsup.config import MethodConfig, bounded
from selfsup.data.augment import AugmentSpec
from selfsup.losses.mocov3 import mocov3_loss
from selfsup.methods.base import Method
from selfsup.methods.byol import byol_views
from selfsup.methods.factory import register_method
from selfsup.models.ema import ema_update, frozen_copy, momentum_schedule
from selfsup.models.heads import ProjectionHead
from selfsup.models.vit_patches import (
    fix_sincos_pos_embed,
    freeze_patch_embed,
    has_learned_pos_embed,
    has_patch_tokens,
    require_vit,
)


@dataclass
class MoCoV3Config(MethodConfig):
    name: str = "mocov3"
    temperature: float = bounded(0.2, gt=0)  # t (the paper's ViT setting; its code uses 1.0 for ResNet-50)
    proj_layers: int = bounded(3, ge=1)  # projector depth (the paper: 3; its code's ResNet-50: 2)
    hidden_dim: int = bounded(4096, ge=1)  # both MLPs' hidden width
    out_dim: int = bounded(256, ge=1)  # projector and predictor output width
    pred_last_bn: bool = True  # BN on the predictor's output (the paper: every layer; its code's ResNet-50: none)
    momentum_base: float = bounded(0.99, ge=0, le=1)  # m at step 0, cosine to momentum_final at the end
    momentum_final: float = bounded(1.0, ge=0, le=1)
    freeze_patch_embed: bool | None = None  # ViT: random fixed patch projection (sec. 5.1); None: on for a ViT
    fixed_pos_embed: bool | None = None  # ViT: fixed 2-D sin-cos positions; None: on for a ViT with learned ones
    crop_scale: tuple[float, float] = bounded((0.08, 1.0), gt=0, le=1, pair=True)
    blur: bool | None = None  # None: blur when the images are 64 px or larger


@register_method("mocov3")
class MoCoV3(Method):
    """MoCo v3 (Chen, Xie, He 2021, ICCV, arXiv:2104.02057, Algorithm 1).

    Query encoder: backbone, projector (``proj_layers``-layer MLP with BN) and predictor (2-layer MLP with BN);
    key encoder: the momentum copy of backbone and projector (``ema_momentum``, cosine from ``momentum_base``
    to ``momentum_final``). Loss :func:`~selfsup.losses.mocov3_loss`: symmetric InfoNCE, each query against
    the keys of the whole global batch (gathered, no queue), scaled by ``2 * temperature``.

    Shapes: ``views`` two float ``[B, C, S, S]``; features ``[B, num_features]``; queries and keys
    ``[B, out_dim]`` per view. ``encoder`` is the query backbone.
    """

    config_class = MoCoV3Config
    min_batch_size = 2  # the MLPs' BatchNorm needs a batch, the loss a negative
    tiny = {"hidden_dim": 32, "out_dim": 16}
    paper = "Chen, Xie, He 2021, ICCV, arXiv:2104.02057"

    def __init__(self, cfg: MoCoV3Config, backbone: nn.Module, image_size: int, num_classes: int = 0):
        super().__init__(cfg, backbone, image_size, num_classes)
        vit = has_patch_tokens(backbone)
        for key in ("freeze_patch_embed", "fixed_pos_embed"):
            if getattr(cfg, key) and not vit:
                require_vit(backbone, f"method.{key}=true")
        if vit if cfg.freeze_patch_embed is None else cfg.freeze_patch_embed:
            freeze_patch_embed(backbone)
        if vit and has_learned_pos_embed(backbone) if cfg.fixed_pos_embed is None else cfg.fixed_pos_embed:
            fix_sincos_pos_embed(backbone, "method.fixed_pos_embed=true")
        dim = backbone.num_features
        self.projector = ProjectionHead(dim, cfg.hidden_dim, cfg.out_dim, num_layers=cfg.proj_layers, last_bn=True)
        self.predictor = ProjectionHead(cfg.out_dim, cfg.hidden_dim, cfg.out_dim, num_layers=2,
                                        last_bn=cfg.pred_last_bn)
        self.key_backbone = frozen_copy(backbone)
        self.key_projector = frozen_copy(self.projector)

    @property
    def views(self) -> list[tuple[AugmentSpec, int]]:
        # The paper's augmentation is BYOL's (Chen et al. 2021, appendix A: crop, jitter, grey, blur, solarize).
        return byol_views(self.image_size, blur=self.cfg.blur, crop_scale=tuple(self.cfg.crop_scale))

    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        """``ema_momentum``: ``m_k = 1 - (1 - m_0)(cos(pi k / K) + 1) / 2`` (to ``momentum_final``)."""
        return {"ema_momentum": momentum_schedule(self.cfg.momentum_base, self.cfg.momentum_final, total_steps)}

    def training_step(self, views: list[Tensor], labels: Tensor, values: dict[str, float]) -> dict[str, Tensor]:
        """``views``: two float ``[B, C, S, S]``; one backbone call per view (its own BN batch), as the paper's code."""
        h = [self.backbone(v) for v in views]
        z = [self.projector(x) for x in h]
        q1, q2 = (self.predictor(x) for x in z)
        with torch.no_grad():
            k1, k2 = (self.key_projector(self.key_backbone(v)) for v in views)
        loss = mocov3_loss(q1, q2, k1, k2, self.cfg.temperature, gather=True)
        return {"loss": loss, "features": torch.cat(h).detach(), "embeddings": torch.cat(z).detach()}

    @torch.no_grad()
    def on_step_end(self, values: dict[str, float]) -> None:
        m = values["ema_momentum"]
        ema_update(self.key_backbone, self.backbone, m)
        ema_update(self.key_projector, self.projector, m)
