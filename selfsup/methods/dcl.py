"""DCL and DCLW: Decoupled Contrastive Learning.

Yeh, Hong, Hsu, Liu, Chen, LeCun, ECCV 2022 (arXiv:2110.06848). SimCLR's framework (two augmented
views -> encoder -> 2-layer MLP projection head, negatives from the global batch) with the
decoupled loss: the positive pair is removed from the denominator of NT-Xent (DCL), and in DCLW
the positive term is also weighted by a negative von Mises-Fisher weight (sigma = 0.5).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.config import MethodConfig, bounded
from selfsup.data.augment import AugmentSpec
from selfsup.losses.decoupled import dcl, dclw
from selfsup.methods.base import Method
from selfsup.methods.factory import register_method
from selfsup.methods.simclr import simclr_views
from selfsup.models.heads import ProjectionHead


@dataclass
class DCLConfig(MethodConfig):
    name: str = "dcl"
    temperature: float = bounded(0.1, gt=0)  # the paper's default for DCL (and the authors' code)
    proj_hidden_dim: int = bounded(2048, ge=1)
    proj_dim: int = bounded(128, ge=1)
    crop_scale: tuple[float, float] = bounded((0.08, 1.0), gt=0, le=1, pair=True)
    color_strength: float = 0.5  # SimCLR's s: jitter 0.8 s, hue 0.2 s
    blur: bool | None = None  # None: blur when the images are 64 px or larger (SimCLR's CIFAR recipe skips it)
    proj_last_bn: bool = True  # BN on the head's output, as SimCLR's released code, on which DCL's builds


@dataclass
class DCLWConfig(DCLConfig):
    name: str = "dclw"
    sigma: float = bounded(0.5, gt=0)  # scale of the von Mises-Fisher weighting of the positive term


class _Decoupled(Method):
    """SimCLR-style two-view pipeline shared by DCL and DCLW; subclasses choose the loss."""

    min_batch_size = 2  # an anchor needs at least one negative besides its positive
    tiny = {"proj_hidden_dim": 32, "proj_dim": 16}
    paper = "Yeh et al. 2022, Decoupled Contrastive Learning, ECCV (arXiv:2110.06848)"

    def __init__(self, cfg: DCLConfig, backbone, image_size: int, num_classes: int = 0):
        super().__init__(cfg, backbone, image_size, num_classes)
        self.head = ProjectionHead(backbone.num_features, cfg.proj_hidden_dim, cfg.proj_dim, last_bn=cfg.proj_last_bn)

    @property
    def views(self) -> list[tuple[AugmentSpec, int]]:
        return simclr_views(self.image_size, self.cfg)

    def loss(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, views, labels, values):
        h = self.backbone(torch.cat(views))  # one backbone call for both views
        z = self.head(h)
        z_a, z_b = z.chunk(2)
        loss = self.loss(z_a, z_b)
        with torch.no_grad():
            pos_sim = torch.nn.functional.cosine_similarity(z_a, z_b, dim=1).mean().float()
        return {"loss": loss, "pos_sim": pos_sim, "features": h.detach(), "embeddings": z.detach()}


@register_method("dcl")
class DCL(_Decoupled):
    """DCL, Decoupled Contrastive Learning (Yeh et al., ECCV 2022, arXiv:2110.06848, eq. 6).

    SimCLR's pipeline (two views -> backbone -> projection head, negatives from the global batch) with
    NT-Xent's positive pair removed from the denominator (:func:`~selfsup.losses.dcl`).

    Shapes: ``views`` two float ``[B, C, S, S]``; features ``[2B, num_features]``; projections
    ``[2B, proj_dim]``. ``encoder`` is the backbone.
    """

    config_class = DCLConfig

    def loss(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        return dcl(z_a, z_b, self.cfg.temperature, gather=True)


@register_method("dclw")
class DCLW(_Decoupled):
    """DCLW, weighted DCL (Yeh et al., ECCV 2022, arXiv:2110.06848, eq. 6 with the vMF weighting).

    :class:`DCL` with the positive term weighted by ``w_i = 2 - M softmax_i(s_ii / sigma)`` over the M
    positive pairs of the global batch (:func:`~selfsup.losses.dclw`): harder positives weigh more.

    Shapes: ``views`` two float ``[B, C, S, S]``; features ``[2B, num_features]``; projections
    ``[2B, proj_dim]``. ``encoder`` is the backbone.
    """

    config_class = DCLWConfig

    def loss(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        return dclw(z_a, z_b, self.cfg.temperature, self.cfg.sigma, gather=True)
