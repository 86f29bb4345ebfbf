"""Schedules precomputed as one value per optimizer step (as in DINO's main_dino.py).

A resumed run reads the same arrays at the same step, so schedules need no state of their own.
:func:`lr_schedule` is ``trainer.schedule``: a linear warm-up from 0 to the peak, then one of
:data:`SCHEDULES`; every value is a pure function of the step.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from selfsup.core.errors import ConfigError

# trainer.schedule -> what follows the warm-up (w warm-up steps, T steps in all, E = steps per epoch,
# p the peak, f = p x trainer.min_lr, gamma = trainer.lr_gamma); each decay stays at or above f.
SCHEDULES = {
    "cosine": "f + (p - f)(1 + cos(pi t)) / 2, t = (s - w) / (T - w)",
    "linear": "f + (p - f)(1 - t), t = (s - w) / (T - w)",
    "step": "p x gamma^floor(s / round(lr_step_epochs x E)): x gamma every lr_step_epochs epochs of the run",
    "multistep": "p x gamma^(milestones m with s >= round(m x E)): x gamma at each of lr_milestones (epochs)",
    "exponential": "p x gamma^((s - w) / E): x gamma per epoch after the warm-up, smoothly every step",
    "constant": "p",
}


def warmup_cosine(peak: float, final: float, total_steps: int, warmup_steps: int, start: float = 0.0) -> np.ndarray:
    """Linear warmup from ``start`` to ``peak`` over ``warmup_steps``, then cosine to ``final``.

    Returns float64 [total_steps]; step ``i``'s value is ``out[i]``.
    """
    warmup_steps = min(warmup_steps, total_steps)
    warm = np.linspace(start, peak, warmup_steps, endpoint=False) if warmup_steps else np.zeros(0)
    rest = total_steps - warmup_steps
    t = np.arange(rest) / max(rest, 1)
    cos = final + 0.5 * (peak - final) * (1 + np.cos(math.pi * t))
    return np.concatenate([warm, cos])


def lr_schedule(kind: str, peak: float, final: float, total_steps: int, warmup_steps: int, *,
                steps_per_epoch: int, gamma: float = 0.1, step_epochs: float = 30.0,
                milestones: Sequence[float] = ()) -> np.ndarray:
    """``trainer.schedule``: float64 [total_steps], the learning rate of each optimizer step.

    Steps ``s < w`` (``w = min(warmup_steps, total_steps)``) warm up linearly, ``p * s / w``; later
    steps follow :data:`SCHEDULES[kind] <SCHEDULES>` (``cosine`` is :func:`warmup_cosine` itself).
    ``step`` and ``multistep`` count epochs from the start of the run (warm-up included), as
    PyTorch's StepLR / MultiStepLR stepped once per epoch do, at step granularity.
    """
    if kind == "cosine":
        return warmup_cosine(peak, final, total_steps, warmup_steps)
    if kind not in SCHEDULES:
        raise ConfigError(f"trainer.schedule={kind} is not one of {' | '.join(SCHEDULES)}")
    w = min(warmup_steps, total_steps)
    s = np.arange(w, total_steps)
    if kind == "linear":
        decay = final + (peak - final) * (1 - (s - w) / max(total_steps - w, 1))
    elif kind == "step":
        decay = peak * gamma ** (s // max(int(round(step_epochs * steps_per_epoch)), 1))
    elif kind == "multistep":
        at = np.array([int(round(m * steps_per_epoch)) for m in milestones], dtype=np.int64)
        decay = peak * gamma ** (s[:, None] >= at[None, :]).sum(axis=1)
    elif kind == "exponential":
        decay = peak * gamma ** ((s - w) / steps_per_epoch)
    else:  # constant
        decay = np.full(len(s), float(peak))
    warm = np.linspace(0.0, peak, w, endpoint=False) if w else np.zeros(0)
    return np.concatenate([warm, np.maximum(decay, final)])


def scaled_lr(base_lr: float, batch_size: int, rule: str) -> float:
    """Peak learning rate from a base rate quoted for batch 256 (Goyal et al. 2017's linear rule; sqrt for LARS/Adam)."""
    if rule == "linear":
        return base_lr * batch_size / 256
    if rule == "sqrt":
        return base_lr * math.sqrt(batch_size / 256)
    return base_lr
