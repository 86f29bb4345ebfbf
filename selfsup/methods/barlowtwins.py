"""Barlow Twins: Self-Supervised Learning via Redundancy Reduction.

Zbontar, Jing, Misra, LeCun, Deny, ICML 2021 (arXiv:2103.03230). Algorithm 1:
two views (BYOL's augmentations) -> backbone -> projector ("3 linear layers, 8192 units, BN +
ReLU between them") -> the cross-correlation matrix C of the batch-standardised embeddings ->
``sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2``. Standardisation and correlation use the
global batch (all processes). The backbone is what gets evaluated.
"""
from __future__ import annotations

from dataclasses import dataclass

from selfsup.config import bounded
from selfsup.losses.noncontrastive import barlow_twins_loss
from selfsup.methods.factory import register_method
from selfsup.methods.twin_projector import TwinProjectorConfig, TwinProjectorMethod


@dataclass
class BarlowTwinsConfig(TwinProjectorConfig):
    name: str = "barlowtwins"
    lambd: float = bounded(5e-3, ge=0)  # weight of the redundancy-reduction (off-diagonal) term


@register_method("barlowtwins")
class BarlowTwins(TwinProjectorMethod):
    """Barlow Twins (Zbontar, Jing, Misra, LeCun, Deny, ICML 2021, arXiv:2103.03230, Algorithm 1).

    Two views -> backbone -> projector -> the cross-correlation matrix C of the two views' batch-standardised
    embeddings over the global batch; the loss ``sum_i (1 - C_ii)^2 + lambd sum_{i != j} C_ij^2``
    (:func:`~selfsup.losses.barlow_twins_loss`) makes the views agree and the dimensions decorrelate.

    Shapes: ``views`` two float ``[B, C, S, S]``; features ``[2B, num_features]``; embeddings
    ``[B, proj_dim]`` per view; C ``[proj_dim, proj_dim]``. ``encoder`` is the backbone.
    """

    config_class = BarlowTwinsConfig
    paper = "Zbontar et al. 2021, arXiv:2103.03230"

    def training_step(self, views, labels, values):
        z_a, z_b, monitored = self.project(views)
        loss = barlow_twins_loss(z_a, z_b, self.cfg.lambd, gather=True)
        return {"loss": loss, **monitored}
