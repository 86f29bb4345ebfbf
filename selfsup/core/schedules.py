"""Schedules precomputed as one value per optimizer step (as in DINO's main_dino.py).

A resumed run reads the same arrays at the same step, so schedules need no state of their own.
"""
from __future__ import annotations

import math

import numpy as np


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


def scaled_lr(base_lr: float, batch_size: int, rule: str) -> float:
    """Peak learning rate from a base rate quoted for batch 256 (Goyal et al. 2017's linear rule; sqrt for LARS/Adam)."""
    if rule == "linear":
        return base_lr * batch_size / 256
    if rule == "sqrt":
        return base_lr * math.sqrt(batch_size / 256)
    return base_lr
