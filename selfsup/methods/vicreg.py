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

from selfsup.config import bounded
from selfsup.losses.noncontrastive import vicreg_terms
from selfsup.methods.factory import register_method
from selfsup.methods.twin_projector import TwinProjectorConfig, TwinProjectorMethod


@dataclass
class VICRegConfig(TwinProjectorConfig):
    name: str = "vicreg"
    sim_weight: float = bounded(25.0, ge=0)  # lambda
    var_weight: float = bounded(25.0, ge=0)  # mu
    cov_weight: float = bounded(1.0, ge=0)  # nu


@register_method("vicreg")
class VICReg(TwinProjectorMethod):
    """VICReg (Bardes, Ponce, LeCun, ICLR 2022, arXiv:2105.04906, eq. 6).

    Two views -> backbone -> expander -> ``sim_weight * invariance + var_weight * variance + cov_weight *
    covariance`` (:func:`~selfsup.losses.vicreg_terms`, global batch): the views' embeddings agree (MSE),
    every dimension keeps a standard deviation of at least 1 (hinge), and dimensions decorrelate.

    Shapes: ``views`` two float ``[B, C, S, S]``; features ``[2B, num_features]``; embeddings
    ``[B, proj_dim]`` per view. ``encoder`` is the backbone.
    """

    config_class = VICRegConfig
    paper = "Bardes et al. 2022, arXiv:2105.04906"

    def training_step(self, views, labels, values):
        z_a, z_b, monitored = self.project(views)
        invariance, variance, covariance = vicreg_terms(z_a, z_b, gather=True)
        cfg = self.cfg
        loss = cfg.sim_weight * invariance + cfg.var_weight * variance + cfg.cov_weight * covariance
        return {"loss": loss, "invariance": invariance.detach(), "variance": variance.detach(),
                "covariance": covariance.detach(), **monitored}
