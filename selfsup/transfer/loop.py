"""The training loop both transfer tasks share, with checkpoints and resume.

Each step draws ``min(train.batch_size, n)`` item indices with replacement from a ``torch.Generator`` seeded
with ``train.seed``, asks the task for its losses on them, sums them, and takes an AdamW step and a scheduler
step. Every ``train.checkpoint_every`` steps and after the last one the whole training state goes atomically
into ``OUT/checkpoints/step-XXXXXXXX.pt`` (the newest only): model, optimizer, scheduler, step, the sampling
generator's state and the host / CUDA RNG states (dropout, the detectors' proposal sampling), so rerunning the
same command resumes where the last checkpoint left off and ends bit-identical to an uninterrupted run.

A finished run (``OUT/metrics.json`` present) is refused before anything is read or trained, where an
interrupted one is resumed; ``run.overwrite=true`` starts either over (discarding its checkpoints and metrics).
A checkpoint written with other settings is refused (only ``run.*``, ``train.device`` and
``train.checkpoint_every`` may differ).
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from selfsup.core.errors import CheckpointError, ConfigError
from selfsup.core.progress import progress_bar
from selfsup.engine.checkpoint import discard_after, latest_checkpoint, rng_state, save_checkpoint, set_rng_state
from selfsup.transfer.config import TransferConfig

__all__ = ["Fitted", "check_not_finished", "fit"]

FREE_KEYS = ("run.", "train.device", "train.checkpoint_every")  # may differ between a checkpoint and its resume


@dataclass
class Fitted:
    """What :func:`fit` returns: the last step's losses (floats), training seconds over every attempt, and the
    step it resumed from (None when it started afresh)."""

    losses: dict[str, float]
    seconds: float
    resumed_from: int | None


def check_not_finished(out: Path, cfg: TransferConfig) -> None:
    """Refuse a finished run (``out/metrics.json`` exists) unless ``run.overwrite=true`` (then :func:`fit`
    discards its metrics and checkpoints and starts it over). Call it before reading any data."""
    metrics = out / "metrics.json"
    if cfg.run.overwrite or not metrics.is_file():
        return
    try:
        step = json.loads(metrics.read_text()).get("steps", "?")
    except (OSError, ValueError, AttributeError):
        step = "?"
    raise ConfigError(f"training already finished at step {step} in {out} (metrics.json): run.overwrite=true "
                      f"starts it over, or choose another run.dir")


def _settings(cfg: TransferConfig, task: str, encoder: str | Path) -> dict[str, object]:
    """The run's settings as flat dotted keys (the encoder resolved), as recorded in its checkpoints."""
    flat = {f"{s}.{k}": v for s, sub in dataclasses.asdict(cfg).items() for k, v in sub.items()}
    return {"task": task, "encoder": str(Path(encoder).expanduser().resolve()), **flat}


def _check_same_settings(path: Path, recorded: dict, mine: dict) -> None:
    changes = [f"{k}={recorded.get(k)} -> {mine.get(k)}" for k in sorted(set(recorded) | set(mine))
               if not k.startswith(FREE_KEYS) and recorded.get(k) != mine.get(k)]
    if changes:
        raise CheckpointError(f"checkpoint {path} was written with other settings: {', '.join(changes)}; a run "
                              f"continues only with its own (run.*, train.device and train.checkpoint_every may "
                              f"differ): drop those overrides, or start over with run.overwrite=true or another "
                              f"run.dir")


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TransferConfig, out: Path, *, task: str,
        encoder: str | Path, num_items: int, losses_of: Callable[[list[int]], dict[str, Tensor]],
        train_mode: Callable[[], None]) -> Fitted:
    """Train for ``train.steps`` steps (resuming from ``out/checkpoints`` when there is one).

    Args:
        model: the module whose ``state_dict`` is checkpointed (encoder, FPN and heads).
        optimizer: its optimizer, with the scheduler as its ``scheduler`` attribute (see ``make_optimizer``).
        losses_of: item indices (into the train split, ``[batch]``) -> named scalar losses, summed for the step.
        train_mode: puts the model in training mode before each step (frozen norms stay in eval mode).
    """
    steps, directory = cfg.train.steps, out / "checkpoints"
    gen = torch.Generator().manual_seed(cfg.train.seed)
    settings = _settings(cfg, task, encoder)
    start, elapsed, losses, resumed = 0, 0.0, {}, None
    if cfg.run.overwrite:  # start over: what an earlier attempt or a finished run left goes
        (out / "metrics.json").unlink(missing_ok=True)
        discard_after(directory, -1)
    found = latest_checkpoint(directory)
    if found:
        path, state = found
        _check_same_settings(path, state.get("meta", {}).get("settings", {}), settings)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        optimizer.scheduler.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        set_rng_state(state["rng"])
        start = resumed = int(state["step"])
        elapsed, losses = float(state.get("elapsed_s", 0.0)), dict(state.get("losses", {}))
        print(f"resumed from {path} at step {start}", file=sys.stderr)
    began = time.monotonic()

    def save(step: int) -> None:
        state = {"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": optimizer.scheduler.state_dict(), "generator": gen.get_state(), "rng": rng_state(),
                 "losses": losses, "elapsed_s": elapsed + time.monotonic() - began, "meta": {"settings": settings}}
        save_checkpoint(directory, step, state, keep=1)

    bar = progress_bar(total=steps, initial=start, desc=task, unit="step")
    for step in range(start, steps):
        train_mode()
        pick = torch.randint(num_items, (min(cfg.train.batch_size, num_items),), generator=gen)
        named = losses_of(pick.tolist())
        loss = sum(named.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        optimizer.scheduler.step()
        bar.update(1)
        done = step + 1
        every = cfg.train.checkpoint_every
        if (every and done % every == 0) or done == steps:
            losses = {k: float(v.detach()) for k, v in named.items()}  # a host sync only when saving
            save(done)
        if step % 10 == 0 or done == steps:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    return Fitted(losses, round(elapsed + time.monotonic() - began, 2), resumed)
