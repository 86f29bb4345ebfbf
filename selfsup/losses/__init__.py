"""Pure loss functions, one module per family, each tested against a slow reference from its paper.

Reduction follows LightlySSL's conventions: mean over samples, a symmetric loss averages its
two directions, so numbers compare 1:1. Each module lists its public losses in ``__all__``; this
package re-exports them by name (explicitly, so editors and type checkers see them), and
``tests/losses/test_exports.py`` fails when a module's ``__all__`` is not re-exported here.
"""
from selfsup.losses.classification import multiclass_hinge
from selfsup.losses.contrastive import nt_xent
from selfsup.losses.decoupled import dcl, dclw
from selfsup.losses.dino import dino_loss, teacher_entropy
from selfsup.losses.ibot import ibot_patch_loss
from selfsup.losses.ijepa import ijepa_loss
from selfsup.losses.koleo import koleo_loss
from selfsup.losses.mae import mae_loss, patchify, unpatchify
from selfsup.losses.metric import contrastive_margin_loss, triplet_loss
from selfsup.losses.moco import infonce
from selfsup.losses.mocov3 import mocov3_loss
from selfsup.losses.nnclr import nearest_neighbour, nnclr_loss
from selfsup.losses.noncontrastive import (
    barlow_twins_loss,
    byol_loss,
    cross_correlation,
    simsiam_loss,
    vicreg_covariance,
    vicreg_loss,
    vicreg_terms,
    vicreg_variance,
)
from selfsup.losses.sinkhorn import sinkhorn_knopp
from selfsup.losses.supcon import supcon_loss
from selfsup.losses.swav import swav_loss

__all__ = [
    "barlow_twins_loss", "byol_loss", "cross_correlation", "dcl", "dclw", "dino_loss", "infonce",
    "multiclass_hinge", "nt_xent", "simsiam_loss", "teacher_entropy", "vicreg_covariance", "vicreg_loss",
    "vicreg_terms", "vicreg_variance",
    "contrastive_margin_loss", "supcon_loss", "triplet_loss",
    "nearest_neighbour", "nnclr_loss", "sinkhorn_knopp", "swav_loss",
    "mae_loss", "mocov3_loss", "patchify", "unpatchify",
    "ibot_patch_loss", "ijepa_loss", "koleo_loss",
]
