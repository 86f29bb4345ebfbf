"""Pure loss functions, one module per family, each tested against a slow reference from its paper.

Reduction follows LightlySSL's conventions: mean over samples, a symmetric loss averages its
two directions, so numbers compare 1:1.
"""
from selfsup.losses.classification import multiclass_hinge
from selfsup.losses.contrastive import nt_xent

__all__ = ["multiclass_hinge", "nt_xent"]
