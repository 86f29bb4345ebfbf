"""The training loop: method-agnostic, on Accelerate (one process, many GPUs, many machines, CPU).

Read top to bottom: build schedules, resume, then per step take the step's uint8 batch from the
split (an index slice in memory, or decoded ahead by DataLoader workers when streamed: the trainer
does not know which), make views on the device, run the method, step the optimizer, update
EMA/queues/centres, log, checkpoint.
Host synchronisation happens only at log and checkpoint steps (and once per step with
``trainer.nonfinite=skip``; see :mod:`selfsup.engine.guard`).
"""
from __future__ import annotations

import re
import signal
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from accelerate import Accelerator

from selfsup.config import Config, config_to_dict, validate_run
from selfsup.config.changes import resume_changes, with_defaults
from selfsup.core.distributed import (
    broadcast_path,
    convert_sync_batchnorm,
    mean_over_processes,
)
from selfsup.core.errors import CheckpointError, NonFiniteError, TrainingInterrupted
from selfsup.core.progress import progress_bar
from selfsup.core.schedules import lr_schedule, scaled_lr
from selfsup.data import Split
from selfsup.data.augment import ViewMaker
from selfsup.engine.checkpoint import (
    discard_after,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from selfsup.engine.guard import NonFiniteGuard
from selfsup.engine.monitor import OnlineMonitor
from selfsup.engine.optim import create_optimizer
from selfsup.engine.run_log import MetricsLog, Window
from selfsup.methods.base import MONITOR_OUTPUTS, Method


class EpochSampler:
    """Global batches of dataset indices: a seeded permutation per epoch, dropping the last partial batch.

    Stateless: step ``s`` always maps to the same indices, so the data order of a resumed run is
    the uninterrupted run's. Each process takes its contiguous share of the global batch.
    """

    def __init__(self, num_samples: int, global_batch: int, seed: int):
        self.num_samples, self.global_batch, self.seed = num_samples, global_batch, seed
        self.steps_per_epoch = num_samples // global_batch
        self._epoch, self._perm = -1, None

    def indices(self, step: int, rank: int, world: int) -> torch.Tensor:
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.num_samples, generator=gen)
        batch = self._perm[i * self.global_batch : (i + 1) * self.global_batch]
        share = self.global_batch // world
        return batch[rank * share : (rank + 1) * share]


def view_seed(seed: int, step: int, process: int, micro: int) -> int:
    """A distinct 63-bit seed for every (run seed, step, process, micro-batch)."""
    return int(np.random.SeedSequence([seed, step, process, micro]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


class Trainer:
    """Trains ``method`` on ``data`` as ``cfg.trainer`` says, writing into ``run_dir``; the experiment trackers
    are ``accelerator``'s (``make_accelerator(cfg, run_dir)`` gives it those of ``run.log_with``)."""

    def __init__(self, cfg: Config, method: Method, data: Split, run_dir: Path,
                 accelerator: Accelerator):
        self.cfg, self.tc, self.data, self.run_dir, self.acc = cfg, cfg.trainer, data, Path(run_dir), accelerator
        self.micro_batch = validate_run(cfg, num_images=len(data), image_hw=tuple(data.shape[-2:]),
                                        processes=accelerator.num_processes, min_batch_size=method.min_batch_size)
        self.sampler = EpochSampler(len(data), self.tc.batch_size, self.tc.seed)
        self.total_steps = self.tc.epochs * self.sampler.steps_per_epoch
        self.end_step = min(self.total_steps, self.tc.max_steps) if self.tc.max_steps else self.total_steps
        self.view_maker = ViewMaker(method.views, data.mean, data.std, is_image=data.is_image)
        # This process's share of each step: an index slice of the split on the device, or decoded ahead
        # by DataLoader workers (a streamed split); either way a function of (seed, step) alone.
        self.stream = data.step_batches(self.sampler, stop=self.total_steps, rank=accelerator.process_index,
                                        world=accelerator.num_processes, device=accelerator.device)
        self.schedules = self._build_schedules(method)
        if self.tc.channels_last:
            method = method.to(memory_format=torch.channels_last)
        self.sync_bn = method.sync_bn_default if self.tc.sync_bn is None else self.tc.sync_bn
        if self.sync_bn and accelerator.num_processes > 1:  # BN over the global batch (shares the parameters)
            method = convert_sync_batchnorm(method, exclude=method.local_bn_modules, cuda=accelerator.device.type == "cuda")
        self.optimizer = create_optimizer(method, self.tc, lr=float(self.schedules["lr"][0]), lr_rules=method.lr_rules)
        self.model, self.optimizer = accelerator.prepare(method, self.optimizer)
        self.method: Method = accelerator.unwrap_model(self.model)
        if self.tc.compile:  # compile the training step; self.method (checkpoints, export, encoder) stays eager
            self.model = torch.compile(self.model)
        self.generator = torch.Generator(device=accelerator.device)
        self.guard = NonFiniteGuard(self.tc.nonfinite, self.method, accelerator.device,
                                    check_grads=accelerator.scaler is None,
                                    gather=accelerator.gather if accelerator.num_processes > 1 else None)
        # online kNN / linear classifier / collapse indicators: reads labels, never the training RNG
        self.monitor = OnlineMonitor(cfg.eval, data, num_features=self.method.backbone.num_features,
                                     steps_per_epoch=self.sampler.steps_per_epoch, seed=self.tc.seed,
                                     device=accelerator.device) if cfg.eval.online else None
        self.step, self.resumed = 0, False
        self.elapsed = 0.0  # seconds spent in the training loop, over all attempts (checkpointed)
        self._stop_signal: int | None = None

    # ------------------------------------------------------------------ set-up

    def _build_schedules(self, method: Method) -> dict[str, np.ndarray]:
        tc, spe = self.tc, self.sampler.steps_per_epoch
        peak = self.peak_lr = scaled_lr(tc.lr, tc.batch_size, tc.lr_scaling)
        warmup = int(round(tc.warmup_epochs * spe))
        if warmup >= self.total_steps > 0 and self.acc.is_main_process:  # e.g. a recipe's warm-up, a shorter run
            warnings.warn(f"trainer.warmup_epochs={tc.warmup_epochs:g} is as long as the run (trainer.epochs="
                          f"{tc.epochs}) or longer: the learning rate never decays"
                          + (" and never reaches its peak" if warmup > self.total_steps else "")
                          + "; lower trainer.warmup_epochs")
        schedules = {
            "lr": lr_schedule(tc.schedule, peak, peak * tc.min_lr, self.total_steps, warmup, steps_per_epoch=spe,
                              gamma=tc.lr_gamma, step_epochs=tc.lr_step_epochs, milestones=tc.lr_milestones),
            "weight_decay": np.full(self.total_steps, tc.weight_decay),
        }
        schedules.update(method.schedules(self.total_steps, spe))
        return schedules

    def values(self, step: int) -> dict[str, float]:
        """Every scheduled value at ``step`` (lr, weight decay, the method's own)."""
        return {name: float(array[step]) for name, array in self.schedules.items()}

    def resume(self) -> None:
        """Continue from a checkpoint: ``resume=auto`` (newest loadable in the run), ``never``, or a path."""
        mode, self.resumed = self.cfg.resume, True
        if mode == "never":
            return
        if mode == "auto":
            # Rank 0 picks the checkpoint and every rank loads that one file (a rank must never resume
            # from another step, e.g. when a newer file appears or is unreadable on one of them).
            found = latest_checkpoint(self.run_dir / "checkpoints") if self.acc.is_main_process else None
            chosen = broadcast_path(found[0] if found else None)
            if chosen is None:
                return
            path = chosen
            state = found[1] if found and found[0] == chosen else load_checkpoint(chosen)
        else:
            path, state = Path(mode), load_checkpoint(Path(mode))
        self._check_compatible(path, state.get("meta", {}))
        try:
            self.method.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:  # shapes or keys differ: another architecture
            raise CheckpointError(f"checkpoint {path} does not fit this run's model ({_mismatch(err)}); "
                                  f"start afresh with resume=never or another run.dir") from None
        self._check_same_settings(path, state.get("meta", {}).get("config"))
        if self.acc.scaler is not None and state.get("scaler"):
            self.acc.scaler.load_state_dict(state["scaler"])
        if self.monitor is not None and state.get("monitor"):
            self.monitor.load_state_dict(state["monitor"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.elapsed = float(state.get("elapsed_s", 0.0))
        self.guard.skipped = int(state.get("skipped_steps", 0))
        self.acc.print(f"resumed from {path} at step {self.step}")

    def _check_compatible(self, path: Path, meta: dict) -> None:
        mine = {"method": self.cfg.method.name, "backbone": self.cfg.backbone.name, "small_stem": self.cfg.backbone.small_stem,
                "total_steps": self.total_steps, "batch_size": self.tc.batch_size}
        for key, value in mine.items():
            if key in meta and meta[key] != value:
                raise CheckpointError(
                    f"checkpoint {path} was written with {key}={meta[key]}, this run has {key}={value} "
                    f"(start afresh with resume=never or another run.dir)"
                )

    def _check_same_settings(self, path: Path, recorded: dict | None) -> None:
        """Refuse to continue a run (resume, or re-run a finished one) with settings other than those its
        checkpoint recorded, except the ones :mod:`selfsup.config.changes` lets differ (run.*, eval.*
        but the online monitor, trainer.max_steps, how often files are written, ...): one line naming every
        changed key as ``old -> new``. Raised before the run directory is written, so nothing in it changes."""
        if not isinstance(recorded, dict):  # a checkpoint written before configs were recorded in it
            return
        changes = resume_changes(with_defaults(recorded), config_to_dict(self.cfg))
        if changes:
            raise CheckpointError(
                f"checkpoint {path} was written with other settings: {', '.join(changes)}; a run continues only "
                f"with its own (run.*, eval.*, trainer.max_steps and how often files are written may differ): drop "
                f"those overrides, or train a new run (another run.dir, or resume=never to start this one over; "
                f"backbone.init_from=RUN starts from a run's encoder)")

    # ------------------------------------------------------------------ loop

    def fit(self) -> None:
        if not self.resumed:
            self.resume()
        if self.step >= self.end_step:
            self.acc.print(f"training already finished at step {self.step}")
            return
        if self.acc.is_main_process:  # what an abandoned attempt wrote after this step goes
            for path in discard_after(self.run_dir / "checkpoints", self.step):
                self.acc.print(f"removed {path}: it is newer than step {self.step}, where this run starts")
        self.log = MetricsLog(self.run_dir, start_step=self.step, accelerator=self.acc, config=config_to_dict(self.cfg),
                              project=self.cfg.run.project, enabled=self.acc.is_main_process)  # + run.log_with's trackers
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._loop()
        finally:
            self.stream.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.log.close()

    def _on_signal(self, signum: int, frame) -> None:
        self._stop_signal = signum  # finish the current step, checkpoint, exit

    def _loop(self) -> None:
        tc = self.tc
        self.model.train()
        bar = progress_bar(total=self.end_step, initial=self.step, desc="train", unit="step",
                           disable=not self.acc.is_main_process)
        window, self._clock = Window(), time.perf_counter()
        with bar:
            while self.step < self.end_step:
                window.add(self.train_step(self.step))
                self.step += 1
                bar.update(1)
                # Read the signal flag once per step: a signal that lands while this step logs (after the
                # checkpoint decision) must not stop the run without its checkpoint; it stops the next step.
                stop = self._stop_signal
                last = self.step == self.end_step or stop is not None
                knn = self.monitor is not None and self.monitor.knn_due(self.step)
                if self.step % tc.log_every == 0 or last or knn:
                    self._check_finite()
                    row = self._log_row(*window.flush(), knn=knn)
                    bar.set_postfix(loss=f"{row['loss']:.4f}" if row["loss"] is not None else "skipped",
                                    lr=f"{row['lr']:.3g}", img_s=f"{row['images_per_s']:.0f}",
                                    **{k: f"{row[k]:.3f}" for k in ("knn_online", "online_linear_acc",
                                                                     "embedding_std") if row.get(k) is not None})
                if self.step % tc.checkpoint_every == 0 or last:
                    self._check_finite()  # a checkpoint never holds the weights of a non-finite step
                    self.save()
                if stop is not None:
                    raise TrainingInterrupted(f"stopped by {signal.Signals(stop).name} at step {self.step}; "
                                              f"checkpoint saved, rerun the same command to resume", stop)

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        """One whole training step: this process's batch of ``step``, its views, the optimizer step
        (what :meth:`fit` runs per step, without logging or checkpoints); returns the detached outputs."""
        return self.optimize(step, self.make_batches(step))

    def make_batches(self, step: int) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        """This process's micro-batches of ``step`` as (views, labels), made lazily on the device."""
        acc, tc = self.acc, self.tc
        images, labels = self.stream.batch(step)  # the sampler's indices of this step, this process's share
        images, labels = images.to(acc.device, non_blocking=True), labels.to(acc.device, non_blocking=True)
        chunks = zip(images.split(self.micro_batch), labels.split(self.micro_batch))
        for micro, (images, labels) in enumerate(chunks):
            # Augmentation randomness is a pure function of (seed, step, process, micro-batch),
            # so views are reproducible and a resumed run sees exactly the views it would have.
            self.generator.manual_seed(view_seed(tc.seed, step, acc.process_index, micro))
            views = self.view_maker(images, self.generator)
            if tc.channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            yield views, labels

    def optimize(self, step: int, batches: Iterable[tuple[list[torch.Tensor], torch.Tensor]]) -> dict[str, torch.Tensor]:
        """One optimizer step over ``grad_accum`` micro-batches; returns the detached mean outputs
        (empty when ``trainer.nonfinite=skip`` dropped the step)."""
        acc, tc = self.acc, self.tc
        values = self.values(step)
        # LrRule: a group's lr is scaled and/or held at the peak (.get: checkpoints written before the rules)
        for group in self.optimizer.param_groups:
            group["lr"] = (self.peak_lr if group.get("lr_fixed") else values["lr"]) * group.get("lr_scale", 1.0)
            group["weight_decay"] = values["weight_decay"] * group["wd_scale"]
        self.guard.begin_step()
        outputs: dict[str, torch.Tensor] = {}
        seen: list[tuple[dict[str, torch.Tensor], torch.Tensor]] = []  # the monitor's share: features, labels
        for micro, (views, labels) in enumerate(batches):
            final = micro == tc.grad_accum - 1
            with acc.autocast(), (acc.no_sync(self.model) if not final else nullcontext()):
                out = self.model(views, labels, values)
                acc.backward(out["loss"] / tc.grad_accum)
            seen.append(({k: out.pop(k).detach() for k in MONITOR_OUTPUTS if k in out}, labels))
            for key, value in out.items():
                outputs[key] = outputs.get(key, 0) + value.detach().float() / tc.grad_accum
        self.method.on_after_backward(values)
        norm = acc.clip_grad_norm_(self.model.parameters(), tc.grad_clip) if tc.grad_clip else None
        if not self.guard.accept(step + 1, outputs["loss"], self.model.parameters(), norm):
            self.optimizer.zero_grad(set_to_none=True)  # skipped: no optimizer step, no EMA/queue/centre update
            return {}
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.method.on_step_end(values)
        if self.monitor is not None:  # the online classifier's step on detached features
            outputs.update(self.monitor.update([o for o, _ in seen], [y for _, y in seen]))
        return outputs

    # ------------------------------------------------------------------ outputs

    def _tick(self) -> None:
        now = time.perf_counter()
        self.elapsed, self._clock = self.elapsed + now - self._clock, now

    def _log_row(self, means: dict[str, float | None], steps: int, seconds: float, knn: bool = False) -> dict:
        self._tick()
        means = mean_over_processes(means)  # every rank logs its share's means; the row holds the global batch's
        if self.monitor is not None:  # every rank takes part (gathered embeddings, sharded kNN features)
            shard = self.acc.num_processes > 1
            means.update(self.monitor.indicators(gather=shard))
            if knn:
                means.update(self.monitor.knn(self.method.encoder, shard=shard))
        row = {"step": self.step, "epoch": self.step / self.sampler.steps_per_epoch, **means,
               **self.values(self.step - 1), "images_per_s": steps * self.tc.batch_size / max(seconds, 1e-9),
               "time_s": round(self.elapsed, 3)}
        if self.tc.nonfinite == "skip":
            row["skipped_steps"] = self.guard.skipped
        self.log.write(row)
        return row

    def save(self) -> Path | None:
        """Checkpoint the whole training state (rank 0 writes; every rank waits for it)."""
        self._tick()
        self.acc.wait_for_everyone()
        path = None
        if self.acc.is_main_process:
            state = {
                "step": self.step,
                "model": self.method.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.acc.scaler.state_dict() if self.acc.scaler is not None else None,
                "rng": rng_state(),
                "elapsed_s": self.elapsed,
                "skipped_steps": self.guard.skipped,
                "monitor": self.monitor.state_dict() if self.monitor is not None else None,
                "meta": {"method": self.cfg.method.name, "backbone": self.cfg.backbone.name,
                         "small_stem": self.cfg.backbone.small_stem, "total_steps": self.total_steps,
                         "batch_size": self.tc.batch_size, "config": config_to_dict(self.cfg),
                         "encoder": _submodule_name(self.method, self.method.encoder)},  # for backbone.init_from
            }
            path = save_checkpoint(self.run_dir / "checkpoints", self.step, state, self.tc.keep_checkpoints)
        self.acc.wait_for_everyone()
        return path

    def _check_finite(self) -> None:
        """Stop with the step, its learning rate and the last good checkpoint if a step went non-finite."""
        bad = self.guard.first_bad_step()
        if bad is None and not self.guard.hopeless:
            return
        found = latest_checkpoint(self.run_dir / "checkpoints")
        last = f"last good checkpoint: {found[0]} (rerun to resume from it" if found else \
            "no checkpoint was written yet (rerun to start afresh"
        hint = ("; trainer.nonfinite=skip may help, or a lower trainer.lr with resume=never)" if found else
                "; a lower trainer.lr or trainer.nonfinite=skip may help)")
        if bad is not None:
            raise NonFiniteError(f"non-finite loss or gradient at step {bad} (lr {self.values(bad - 1)['lr']:.3g}); "
                                 f"{last}{hint}")
        raise NonFiniteError(f"{self.guard.consecutive} steps in a row had a non-finite loss or gradient "
                             f"(steps {self.step - self.guard.consecutive + 1}-{self.step}, all skipped); {last}{hint}")


def _submodule_name(model: torch.nn.Module, module: torch.nn.Module) -> str | None:
    """The dotted name of ``module`` inside ``model`` (the prefix of its keys in the state dict), or None."""
    return next((name for name, found in model.named_modules() if found is module and name), None)


def _mismatch(err: BaseException) -> str:
    """The first informative line of a ``load_state_dict`` error."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if line.startswith(("size mismatch", "Missing key", "Unexpected key"))]
    first = (useful or lines or [type(err).__name__])[0]
    shapes = re.match(r"size mismatch for (\S+): copying a param with shape torch.Size\((.*)\) from checkpoint, "
                      r"the shape in current model is torch.Size\((.*)\)", first)
    if shapes:
        first = f"{shapes[1]} is {shapes[2]} in the checkpoint, {shapes[3]} here"
    return first[:300]
