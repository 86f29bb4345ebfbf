"""``selfsup bench``: training throughput end to end versus the model-only bound.

End to end = slice a batch, make the views on the device, forward, backward, optimizer step.
Model only = the same step on views made once in advance. Their ratio says what the data
pipeline costs; ``augment_share`` is the time spent making views over the end-to-end time.
The three are measured in interleaved rounds (median per round), so a noisy machine shifts
all of them together and the ratio stays meaningful.
"""
from __future__ import annotations

import resource
import statistics
import tempfile
import time

import torch

from selfsup.config import Config
from selfsup.data import open_split
from selfsup.engine.build import build_method, make_accelerator
from selfsup.engine.trainer import Trainer


def bench(cfg: Config, *, steps: int = 10, warmup: int = 3, rounds: int = 3) -> dict:
    """Measure images/s (end to end and model only) for ``cfg``'s method, data and backbone."""
    acc = make_accelerator(cfg)
    data = open_split(cfg.data, "train", seed=cfg.trainer.seed)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, build_method(cfg, data), data, run_dir, acc)
        trainer.model.train()
        sync = torch.cuda.synchronize if acc.device.type == "cuda" else (lambda: None)
        for step in range(warmup):
            trainer.train_step(step)
        premade = [(views, labels) for views, labels in trainer.make_batches(0)]
        timings: dict[str, list[float]] = {"end_to_end": [], "model_only": [], "augment": []}
        step = warmup
        for _ in range(rounds):
            for name, run in (("end_to_end", trainer.train_step),
                              ("model_only", lambda s: trainer.optimize(s, premade)),
                              ("augment", lambda s: list(trainer.make_batches(s)))):
                sync()
                start = time.perf_counter()
                for i in range(steps):
                    run(step + i)
                sync()
                timings[name].append((time.perf_counter() - start) / steps)
            step += steps
        monitor = _monitor_seconds(trainer) if trainer.monitor is not None else None
    per_step = {name: statistics.median(values) for name, values in timings.items()}
    batch = cfg.trainer.batch_size
    return {
        "method": cfg.method.name, "backbone": cfg.backbone.name, "batch_size": batch,
        "precision": cfg.trainer.precision, "device": str(acc.device), "processes": acc.num_processes,
        "images_per_s": batch / per_step["end_to_end"],
        "model_only_images_per_s": batch / per_step["model_only"],
        "ratio": per_step["model_only"] / per_step["end_to_end"],
        "augment_share": per_step["augment"] / per_step["end_to_end"],
        "peak_memory_mb": _peak_memory_mb(acc.device),
        **_monitor_shares(monitor, cfg, trainer, per_step["end_to_end"]),
    }


def _monitor_seconds(trainer: Trainer, repeats: int = 3) -> dict[str, float]:
    """Median seconds of the online monitor's periodic work: one kNN pass, one row's collapse indicators
    (its per-step online classifier is inside the end-to-end step already)."""
    monitor, times = trainer.monitor, {"knn": [], "indicators": []}
    monitor.subsets()  # read once per run: not part of the periodic cost
    for _ in range(repeats):
        for name, run in (("knn", lambda: monitor.knn(trainer.method.encoder, shard=False)),
                          ("indicators", lambda: monitor.indicators(gather=False))):
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _monitor_shares(seconds: dict[str, float] | None, cfg: Config, trainer: Trainer, step_s: float) -> dict:
    """The monitor's periodic cost as a share of the step time, amortised over its intervals."""
    if seconds is None:
        return {"online_monitor": False}
    knn_every, log_every = trainer.monitor.knn_every, cfg.trainer.log_every
    knn_share = seconds["knn"] / (knn_every * step_s) if knn_every else 0.0
    return {"online_monitor": True, "online_knn_s": seconds["knn"], "online_knn_every_steps": knn_every,
            "online_knn_share": knn_share, "online_indicators_share": seconds["indicators"] / (log_every * step_s)}


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
