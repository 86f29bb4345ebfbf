"""Optimizer construction: parameter groups without weight decay on biases and norms."""
from __future__ import annotations

import torch
from timm.optim import Lars
from torch import nn

from selfsup.config import TrainerConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights (decayed) and biases / normalisation parameters (ndim <= 1, not decayed).

    Each group carries ``wd_scale`` (1 or 0) so the trainer can schedule weight decay.
    With LARS, a group whose weight decay is 0 is also excluded from the trust-ratio
    adaptation (timm's Lars adapts only when weight_decay != 0), as SimCLR prescribes.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "wd_scale": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "wd_scale": 0.0},
    ]


def create_optimizer(model: nn.Module, cfg: TrainerConfig, lr: float) -> torch.optim.Optimizer:
    """SGD (momentum), AdamW or LARS (timm.optim.Lars; You et al. 2017) over :func:`param_groups`.

    LARS scales each decayed weight tensor's step by ``eta * ||w|| / (||g|| + wd * ||w||)``
    (``eta`` = ``trainer.lars_trust_coefficient``), i.e. the step is ``lr * ratio * (g + wd * w)``;
    with ``trainer.lars_trust_clip`` (LARC's clipping) it is ``min(lr, ratio) * (g + wd * w)``.
    LARS learning rates are only comparable between runs with the same eta.
    """
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(cfg.momentum, 0.999))
    return Lars(groups, lr=lr, momentum=cfg.momentum, trust_coeff=cfg.lars_trust_coefficient,
                trust_clip=cfg.lars_trust_clip)
