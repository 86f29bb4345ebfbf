"""Exponential moving averages of networks: MoCo's key encoder, BYOL's target, DINO's teacher."""
from __future__ import annotations

import copy

import torch
from torch import nn

from selfsup.core.schedules import warmup_cosine


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with ``requires_grad=False`` everywhere: it never reaches the optimizer."""
    clone = copy.deepcopy(module)
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """``target = momentum * target + (1 - momentum) * source`` for parameters; buffers
    (e.g. BN running statistics) are copied, as in MoCo (He et al. 2020, Alg. 1) and BYOL."""
    t_params, s_params = list(target.parameters()), list(source.parameters())
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
    for t_buf, s_buf in zip(target.buffers(), source.buffers()):
        t_buf.copy_(s_buf)


def momentum_schedule(base: float, final: float, total_steps: int):
    """Cosine increase of the EMA momentum from ``base`` to ``final`` (BYOL, sec. 3.2; DINO)."""
    return warmup_cosine(base, final, total_steps, warmup_steps=0)
