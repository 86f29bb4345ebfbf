"""Optimizer construction: parameter groups without weight decay on biases and norms, and with
per-submodule learning-rate rules."""
from __future__ import annotations

import torch
from timm.optim import Lars
from torch import nn

from selfsup.config import TrainerConfig
from selfsup.methods.base import LrRule


def param_groups(model: nn.Module, weight_decay: float, lr_rules: dict[str, LrRule] | None = None) -> list[dict]:
    """Weights (decayed) and biases / normalisation parameters (ndim <= 1, not decayed), split
    further by ``lr_rules`` (submodule dotted name -> :class:`LrRule`).

    The first two groups are the parameters without a rule, weights then the rest (present
    even when empty, so checkpoints of runs without rules keep their layout). Each group carries
    ``wd_scale`` (1 or 0) so the trainer can schedule weight decay, and ``lr_scale`` /
    ``lr_fixed`` for its learning rate. With LARS, a group whose weight decay is 0 is also
    excluded from the trust-ratio adaptation (timm's Lars adapts only when weight_decay != 0),
    as SimCLR prescribes.
    """
    rule_of: dict[int, LrRule] = {}
    for name, rule in (lr_rules or {}).items():
        for p in model.get_submodule(name).parameters():
            rule_of[id(p)] = rule
    buckets: dict[tuple[LrRule, bool], list[nn.Parameter]] = {(LrRule(), True): [], (LrRule(), False): []}
    for p in model.parameters():
        if p.requires_grad:
            buckets.setdefault((rule_of.get(id(p), LrRule()), p.ndim > 1), []).append(p)
    return [
        {"params": params, "weight_decay": weight_decay if decayed else 0.0, "wd_scale": 1.0 if decayed else 0.0,
         "lr_scale": rule.scale, "lr_fixed": rule.fixed}
        for (rule, decayed), params in buckets.items()
        if params or rule == LrRule()
    ]


def create_optimizer(model: nn.Module, cfg: TrainerConfig, lr: float,
                     lr_rules: dict[str, LrRule] | None = None) -> torch.optim.Optimizer:
    """SGD (momentum), AdamW or LARS (timm.optim.Lars; You et al. 2017) over :func:`param_groups`.

    LARS scales each decayed weight tensor's step by ``eta * ||w|| / (||g|| + wd * ||w||)``
    (``eta`` = ``trainer.lars_trust_coefficient``), i.e. the step is ``lr * ratio * (g + wd * w)``;
    with ``trainer.lars_trust_clip`` (LARC's clipping) it is ``min(lr, ratio) * (g + wd * w)``.
    LARS learning rates are only comparable between runs with the same eta.
    """
    groups = param_groups(model, cfg.weight_decay, lr_rules)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(cfg.momentum, 0.999))
    return Lars(groups, lr=lr, momentum=cfg.momentum, trust_coeff=cfg.lars_trust_coefficient,
                trust_clip=cfg.lars_trust_clip)
