"""Checks of the losses' scalar arguments (temperatures, weights, margins): a non-positive temperature
gives NaN or infinite logits, not an error, so every loss refuses such a value up front.

Python numbers and CPU scalar tensors are checked; a scalar tensor on an accelerator is not (reading
it would synchronise the host with the device on every step).
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from selfsup.core.errors import ConfigError

__all__: list[str] = []  # helpers of the loss modules, no losses


def check_scalar(loss: str, name: str, value: Any, *, allow_zero: bool = False) -> None:
    """Raise a one-line :class:`ConfigError` unless ``value`` is a finite number > 0 (>= 0 with ``allow_zero``).

    ``loss`` and ``name`` name the culprit: ``nt_xent: temperature must be a finite number > 0, got 0``.
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.device.type != "cpu":
            return
        value = float(value)
    ok = isinstance(value, numbers.Real) and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ConfigError(f"{loss}: {name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")
