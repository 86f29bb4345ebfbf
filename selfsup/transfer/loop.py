"""The training loop both transfer tasks share, with checkpoints and resume.

Each step draws ``min(train.batch_size, n)`` item indices with replacement from a ``torch.Generator`` seeded
with ``train.seed``, asks the task for its losses on them, sums them, and takes an AdamW step and a scheduler
step. Every ``train.checkpoint_every`` steps and after the last one the whole training state goes atomically
into ``OUT/checkpoints/step-XXXXXXXX.pt`` (the newest only): model, optimizer, scheduler, step, the sampling
generator's state and the host / CUDA RNG states (dropout, the detectors' proposal sampling), so rerunning the
same command resumes where the last checkpoint left off and ends bit-identical to an uninterrupted run.

Several processes (``./launch.sh transfer ...``, torch.distributed initialised by
:func:`selfsup.transfer.common.join_processes`): every process draws the same global pick from the same generator
and takes its own contiguous slice of it (``train.batch_size`` stays the global batch and must divide by the
process count); the gradients are averaged over processes after each backward (one flat all-reduce), so the step
is the one process's step on the global batch whenever each process's loss normaliser is the same (e.g. a
segmentation share without ignored pixels: cross-entropy is a mean over each share's labelled pixels). Rank 0 alone
writes checkpoints (holding every rank's RNG state) and prints; all ranks resume from rank 0's checkpoint. Each
rank's own RNG (dropout, proposal sampling) is seeded ``train.seed + rank`` after the model is built.

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

from selfsup.core.distributed import (broadcast_module_state, broadcast_path, mean_over_processes, rank,
                                      world_size)
from selfsup.core.errors import CheckpointError, ConfigError
from selfsup.core.progress import progress_bar
from selfsup.engine.checkpoint import (discard_after, latest_checkpoint, load_checkpoint, rng_state, save_checkpoint,
                                      set_rng_state)
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
    defaults = _settings(TransferConfig(), "", "")
    recorded = {**{k: v for k, v in defaults.items() if k not in ("task", "encoder")}, **recorded}  # keys added later
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
    world, me = world_size(), rank()
    batch = min(cfg.train.batch_size, num_items)
    if batch % world:
        capped = "" if batch == cfg.train.batch_size else f", capped at the {num_items} training items"
        raise ConfigError(f"train.batch_size={batch} (the global batch{capped}) does not divide by the {world} "
                          f"processes: choose a multiple of {world}")
    share = slice(me * batch // world, (me + 1) * batch // world)  # this process's contiguous slice of each pick
    gen = torch.Generator().manual_seed(cfg.train.seed)
    settings = _settings(cfg, task, encoder)
    start, elapsed, losses, resumed = 0, 0.0, {}, None
    if world > 1:
        broadcast_module_state(model)  # every rank starts from rank 0's weights
        torch.manual_seed(cfg.train.seed + me)  # each rank its own dropout masks / proposal samples
    if cfg.run.overwrite and me == 0:  # start over: what an earlier attempt or a finished run left goes
        (out / "metrics.json").unlink(missing_ok=True)
        discard_after(directory, -1)
    found = latest_checkpoint(directory) if me == 0 else None
    if world > 1:  # every rank resumes from the checkpoint rank 0 found (None: a fresh start for all)
        path = broadcast_path(found[0] if found else None)
        found = (path, found[1] if me == 0 else load_checkpoint(path)) if path else None
    if found:
        path, state = found
        _check_same_settings(path, state.get("meta", {}).get("settings", {}), settings)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        optimizer.scheduler.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        ranks = state.get("rng_ranks", [])
        set_rng_state(ranks[me] if len(ranks) == world else state["rng"])
        start = resumed = int(state["step"])
        elapsed, losses = float(state.get("elapsed_s", 0.0)), dict(state.get("losses", {}))
        if me == 0:
            print(f"resumed from {path} at step {start}", file=sys.stderr)
    began = time.monotonic()

    def save(step: int) -> None:
        rngs = _every_rank(rng_state()) if world > 1 else None  # a collective: every rank takes part
        if me != 0:
            return
        state = {"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": optimizer.scheduler.state_dict(), "generator": gen.get_state(), "rng": rng_state(),
                 "losses": losses, "elapsed_s": elapsed + time.monotonic() - began, "meta": {"settings": settings}}
        if rngs is not None:
            state["rng_ranks"] = rngs
        save_checkpoint(directory, step, state, keep=1)

    trained = [p for group in optimizer.param_groups for p in group["params"]]
    bar = progress_bar(total=steps, initial=start, desc=task, unit="step", disable=me != 0)
    for step in range(start, steps):
        train_mode()
        pick = torch.randint(num_items, (batch,), generator=gen)
        named = losses_of(pick[share].tolist())
        loss = sum(named.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1:
            _average_gradients(trained)
        optimizer.step()
        optimizer.scheduler.step()
        bar.update(1)
        done = step + 1
        every = cfg.train.checkpoint_every
        if (every and done % every == 0) or done == steps:
            losses = mean_over_processes({k: float(v.detach()) for k, v in named.items()})  # synced when saving
            save(done)
        if step % 10 == 0 or done == steps:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    return Fitted(losses, round(elapsed + time.monotonic() - began, 2), resumed)


def _every_rank(obj: object) -> list:
    """``obj`` of every rank, in rank order (pickled through torch.distributed)."""
    parts: list = [None] * world_size()
    torch.distributed.all_gather_object(parts, obj)
    return parts


@torch.no_grad()
def _average_gradients(params: list[nn.Parameter]) -> None:
    """Each gradient := its mean over processes, in one all-reduce of a flat buffer, as DistributedDataParallel
    averages them; done after the backward, so the tasks call their modules as they are (no wrapper, and a
    detector's layers that a step leaves unused need no ``find_unused_parameters``). A parameter no loss
    reached on some rank counts as zero there; one no rank reached keeps ``grad=None`` (AdamW skips it, as in
    one process). The buffer's last ``len(params)`` entries count the ranks that had a gradient."""
    if not params:
        return
    had = torch.tensor([float(p.grad is not None) for p in params], device=params[0].device)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
                     + [had.to(params[0].dtype)])
    torch.distributed.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p, reached in zip(params, flat[-len(params):].tolist()):
        mean = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
        if reached > 0:
            p.grad = mean.clone() if p.grad is None else p.grad.copy_(mean)
