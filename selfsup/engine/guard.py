"""Guarding training against non-finite losses and gradients (``trainer.nonfinite``).

``stop`` (default): each step's "bad" flag is folded into a device tensor holding the first bad
step, without a host sync; the trainer reads it where it syncs anyway (log and checkpoint steps),
so a NaN stops the run before any checkpoint could hold it, and the message names the exact step.
Gradients are checked when clipping already computed their norm (free); otherwise a NaN gradient
shows up as a NaN loss one step later.

``skip``: a bad step must not touch the model, so the decision is needed before the optimizer
step. That costs one host sync per step (on a GPU the CPU waits for the step's backward, which
stalls the launch queue: a few per cent of throughput on small models, less on large ones) and
one copy of the model's buffers per step (BatchNorm statistics that the bad step's forward
already changed are put back). A skipped step takes no optimizer step and no EMA / queue /
centre update (``on_step_end``); the step counter still advances, so schedules and data order
stay those of the uninterrupted run. Gradients are always checked in this mode.

With a GradScaler (fp16), non-finite gradients are the scaler's business (it skips those steps
itself and lowers its scale), so only the loss is checked.
"""
from __future__ import annotations

from typing import Callable, Iterable, Literal

import torch
from torch import nn

MAX_CONSECUTIVE_SKIPS = 20  # skip mode: this many bad steps in a row means the run cannot recover


def total_grad_norm(parameters: Iterable[nn.Parameter]) -> torch.Tensor:
    """The global L2 norm of the gradients (a device scalar; no host sync)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6: one fused kernel per device
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


class NonFiniteGuard:
    """Decides, step by step, whether a step's loss (and gradients) are finite.

    Args:
        mode: ``"stop"`` or ``"skip"`` (see the module docstring).
        model: the method; its buffers are saved before and restored after a skipped step.
        device: where the step flags live.
        check_grads: also check gradients (False under a GradScaler).
        gather: ``accelerator.gather`` when there are several processes, so that every process
            reaches the same decision; ``None`` for one process.
    """

    def __init__(self, mode: Literal["stop", "skip"], model: nn.Module, device: torch.device, *,
                 check_grads: bool = True, gather: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.mode, self.check_grads, self.gather = mode, check_grads, gather
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)  # stop: first bad step, or -1
        self.skipped = 0  # skip: steps skipped so far in the run (checkpointed by the trainer)
        self.consecutive = 0  # skip: bad steps in a row, ending with the last one
        self._buffers = list(model.buffers()) if mode == "skip" else []
        self._saved = [b.detach().clone() for b in self._buffers]

    def begin_step(self) -> None:
        """Skip mode: remember the buffers, which the coming forward pass may change."""
        for saved, buffer in zip(self._saved, self._buffers):
            saved.copy_(buffer)

    def accept(self, step: int, loss: torch.Tensor, parameters: Iterable[nn.Parameter],
               grad_norm: torch.Tensor | None = None) -> bool:
        """Whether to apply the update of ``step`` (1-based). Always True in stop mode."""
        bad = ~torch.isfinite(loss.detach())
        if self.check_grads and grad_norm is None and self.mode == "skip":
            grad_norm = total_grad_norm(parameters)
        if self.check_grads and grad_norm is not None:
            bad = bad | ~torch.isfinite(grad_norm.to(bad.device))
        if self.mode == "stop":
            self.first_bad = torch.where(bad & (self.first_bad < 0), step, self.first_bad)
            return True
        if self.gather is not None:
            bad = self.gather(bad.reshape(1)).any()
        if not bool(bad):  # the one host sync per step of skip mode
            self.consecutive = 0
            return True
        self.skipped += 1
        self.consecutive += 1
        for saved, buffer in zip(self._saved, self._buffers):
            buffer.copy_(saved)
        return False

    def first_bad_step(self) -> int | None:
        """Stop mode: the first step whose loss or gradients were not finite (a host sync)."""
        flags = self.first_bad.reshape(1) if self.gather is None else self.gather(self.first_bad.reshape(1))
        bad = [int(v) for v in flags.tolist() if v >= 0]
        return min(bad) if bad else None

    @property
    def hopeless(self) -> bool:
        """Skip mode: so many bad steps in a row that skipping will not get the run going again."""
        return self.consecutive >= MAX_CONSECUTIVE_SKIPS
