"""Siamese metric learning: a twin network with shared weights trained with a contrastive (margin) loss or a
triplet loss.

Hadsell, Chopra, LeCun, "Dimensionality Reduction by Learning an Invariant Mapping", CVPR 2006: the same
network G_W maps both inputs of a pair; eq. 4 pulls similar pairs together and pushes dissimilar ones
apart up to a margin m, on the Euclidean distance. Schroff, Kalenichenko, Philbin, "FaceNet", CVPR 2015
(arXiv:1503.03832): a deep network -> a 128-d embedding on the unit hypersphere (L2 normalisation), the
triplet loss [||f(a) - f(p)||^2 - ||f(a) - f(n)||^2 + alpha]_+ with alpha = 0.2, triplets mined online in
the batch (semi-hard negatives, sec. 3.2).

Here the twin (in fact n-tuple) network is one backbone + embedding head applied to every view; pairs and
triplets are formed within the global batch (gathered over processes), positives sharing a label. Where
the positives come from (``method.positives``): the class labels, or, for unlabelled data, the two
augmented views of one image (each image its own class).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from selfsup.config import MethodConfig, bounded
from selfsup.core.distributed import rank
from selfsup.core.errors import ConfigError
from selfsup.data.augment import AugmentSpec
from selfsup.losses import contrastive_margin_loss, triplet_loss
from selfsup.methods.base import Method
from selfsup.methods.factory import register_method
from selfsup.methods.simclr import simclr_views
from selfsup.models.heads import ProjectionHead

PAPER_DISTANCE = {"triplet": "squared", "contrastive": "euclidean"}  # FaceNet eq. 1, Hadsell eq. 4


@dataclass
class SiameseConfig(MethodConfig):
    name: str = "siamese"
    loss: Literal["triplet", "contrastive"] = "triplet"  # FaceNet's triplet loss or Hadsell's contrastive loss
    margin: float = bounded(0.2, gt=0)  # alpha of FaceNet (unit embeddings, squared distances); m of Hadsell
    # auto: each paper's, squared for triplet (FaceNet), euclidean for contrastive (Hadsell)
    distance: Literal["auto", "euclidean", "squared"] = "auto"
    mining: Literal["all", "hard", "semihard"] = "semihard"  # triplet only: batch-all, batch-hard, FaceNet's semi-hard
    # auto: the class labels when the data has them, else the two views of one image (unlabelled data)
    positives: Literal["auto", "labels", "views"] = "auto"
    normalize: bool = True  # L2-normalised embeddings (FaceNet); false: raw, as Hadsell's G_W
    embed_dim: int = bounded(128, ge=1)  # FaceNet's 128
    embed_hidden_dim: int = bounded(512, ge=1)  # embed_layers >= 2 only
    embed_layers: int = bounded(1, ge=1)  # 1: a linear embedding layer (FaceNet); 2+: an MLP with BN + ReLU
    crop_scale: tuple[float, float] = bounded((0.08, 1.0), gt=0, le=1, pair=True)  # SimCLR's augmentation keys
    color_strength: float = 0.5
    blur: bool | None = None


@register_method("siamese")
class Siamese(Method):
    """Siamese metric learning (Hadsell, Chopra, LeCun 2006; Schroff et al. 2015, FaceNet, arXiv:1503.03832).

    One network with shared weights (backbone + embedding head, L2-normalised per ``method.normalize``) maps
    two views of every image; :func:`~selfsup.losses.triplet_loss` (``method.mining``: batch-all, batch-hard
    or semi-hard) or :func:`~selfsup.losses.contrastive_margin_loss` over the 2N embeddings of the global
    batch, with ``method.margin`` and ``method.distance``. Positives share a class label (``positives:
    labels``) or are the two views of one image (``views``; ``auto`` picks labels when the data has classes).
    With labels this reads ``labels`` although ``uses_labels`` is false: it also pretrains on unlabelled data.

    Shapes: ``views`` two float ``[B, C, S, S]``; ``labels`` int64 ``[B]`` (-1: unlabelled); backbone features
    ``[2B, num_features]``; embeddings ``[2B, embed_dim]``. ``encoder`` is the backbone.
    """

    config_class = SiameseConfig
    min_batch_size = 2  # a triplet needs a negative: two images
    tiny = {"embed_dim": 16, "embed_hidden_dim": 32, "embed_layers": 2}
    paper = "Hadsell et al. 2006; Schroff et al. 2015, arXiv:1503.03832"

    def __init__(self, cfg: SiameseConfig, backbone, image_size: int, num_classes: int = 0):
        super().__init__(cfg, backbone, image_size, num_classes)
        labelled = num_classes >= 2
        if cfg.positives == "labels" and not labelled:
            raise ConfigError(f"method.positives=labels needs labelled data with at least 2 classes, got {num_classes}; "
                              "use method.positives=views (two views of one image) for unlabelled data")
        self.positives = cfg.positives if cfg.positives != "auto" else ("labels" if labelled else "views")
        self.distance = PAPER_DISTANCE[cfg.loss] if cfg.distance == "auto" else cfg.distance
        self.head = ProjectionHead(backbone.num_features, cfg.embed_hidden_dim, cfg.embed_dim, num_layers=cfg.embed_layers)

    @property
    def views(self) -> list[tuple[AugmentSpec, int]]:
        return simclr_views(self.image_size, self.cfg)

    def pair_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """The labels [2B] of the two stacked views: the class, or a global image index (unique over processes)."""
        if self.positives == "views":
            labels = torch.arange(len(labels), device=labels.device) + rank() * len(labels)
        return torch.cat([labels, labels])

    def training_step(self, views, labels, values):
        h = self.backbone(torch.cat(views))  # the twins share every weight: one call for both views
        e = self.head(h)
        e = F.normalize(e, dim=1) if self.cfg.normalize else e
        y = self.pair_labels(labels)
        if self.cfg.loss == "triplet":
            loss = triplet_loss(e, y, self.cfg.margin, self.distance, self.cfg.mining, gather=True)
        else:
            loss = contrastive_margin_loss(e, y, self.cfg.margin, self.distance, gather=True)
        return {"loss": loss, "features": h.detach(), "embeddings": e.detach()}
