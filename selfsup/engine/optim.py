"""Optimizer construction: our parameter groups (no weight decay on biases and norms, per-submodule
learning-rate rules) handed to timm's optimizer factory, so ``trainer.optimizer`` takes any of its names."""
from __future__ import annotations

import inspect

import torch
from timm.optim import Lars, create_optimizer_v2, get_optimizer_info
from torch import nn

from selfsup.config import TrainerConfig
from selfsup.core.errors import ConfigError
from selfsup.methods.base import LrRule

# our name -> timm's: `sgd` has always meant SGD with (heavy-ball) momentum here; timm's `sgd` is Nesterov's
OPTIMIZER_ALIASES = {"sgd": "momentum"}


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


def timm_optimizer_name(name: str) -> str:
    """``trainer.optimizer`` as timm's factory names it (``sgd`` -> ``momentum``, ``lookahead_sgd`` -> ...)."""
    prefix, _, base = name.lower().rpartition("_")
    return (prefix + "_" if prefix else "") + OPTIMIZER_ALIASES.get(base, base)


def optimizer_kwargs(cfg: TrainerConfig) -> dict:
    """The keyword arguments our config gives timm's factory for ``cfg.optimizer`` (besides lr, weight
    decay and momentum): Adam-like ``betas = (momentum, beta2)``, LARS's eta and clip, then
    ``trainer.optimizer_args`` over them."""
    info = get_optimizer_info(timm_optimizer_name(cfg.optimizer).rpartition("_")[2])
    if info.second_order:
        raise ConfigError(f"trainer.optimizer={cfg.optimizer} is a second-order optimizer (it needs the Hessian's "
                          "backward pass, which the trainer does not run); pick a first-order one")
    kwargs: dict = {}
    if info.has_betas:
        default = (info.defaults or {}).get("betas", _signature_default(info.opt_class, "betas"))
        if (isinstance(default, (tuple, list)) and len(default) == 2) or cfg.beta2 is not None:
            kwargs["betas"] = (cfg.momentum, cfg.beta2 if cfg.beta2 is not None else default[1])
    if info.opt_class is Lars:
        kwargs["trust_coeff"] = cfg.lars_trust_coefficient
        if cfg.lars_trust_clip:
            kwargs["trust_clip"] = True
    return {**kwargs, **cfg.optimizer_args}


def create_optimizer(model: nn.Module, cfg: TrainerConfig, lr: float,
                     lr_rules: dict[str, LrRule] | None = None) -> torch.optim.Optimizer:
    """``cfg.optimizer`` from timm's factory (``timm.optim.create_optimizer_v2``) over :func:`param_groups`.

    timm never regroups them: each group keeps its weight decay (0 for biases and norms) and our
    ``wd_scale`` / ``lr_scale`` / ``lr_fixed``, which the trainer reads every step. ``trainer.momentum``
    is the momentum of SGD, LARS, RMSProp, ... and beta1 of Adam-like optimizers.

    LARS (timm.optim.Lars; You et al. 2017) scales each decayed weight tensor's step by
    ``eta * ||w|| / (||g|| + wd * ||w||)`` (``eta`` = ``trainer.lars_trust_coefficient``), i.e. the step is
    ``lr * ratio * (g + wd * w)``; with ``trainer.lars_trust_clip`` (LARC's clipping) it is
    ``min(lr, ratio) * (g + wd * w)``. LARS learning rates are only comparable between runs with the same eta.
    """
    groups = param_groups(model, cfg.weight_decay, lr_rules)
    kwargs = optimizer_kwargs(cfg)
    try:
        return create_optimizer_v2(groups, opt=timm_optimizer_name(cfg.optimizer), lr=lr,
                                   weight_decay=cfg.weight_decay, momentum=cfg.momentum, **kwargs)
    except (TypeError, ValueError, ImportError) as err:  # a bad optimizer_args key or value, a missing package
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"trainer.optimizer={cfg.optimizer} with {kwargs or 'no extra arguments'}: {first}") from None


def _signature_default(cls: type, name: str):
    parameter = inspect.signature(cls).parameters.get(name)
    return parameter.default if parameter is not None else None
