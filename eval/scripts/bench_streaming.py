"""Streaming vs in-memory training throughput, measured in one process in alternating rounds.

Measures images/s and CPU seconds per step (the process and its DataLoader workers) of one recipe's
training step with the split decoded into memory and with it streamed from disk, per round and as
medians, and the streaming / in-memory ratio. Run from the repository root, e.g. on CIFAR-10 JPEG::

    python eval/scripts/bench_streaming.py simclr-cifar10 data.name=imagefolder \\
        data.train=/tmp/cifar10-jpeg/train backbone.name=resnet18 backbone.small_stem=false \\
        trainer.batch_size=256 --steps 15 --rounds 4 --workers 2

No dated result from this script yet; eval/results/streaming-cpu-2026-11-22.md measured the same
question with ``selfsup bench`` and ``selfsup train`` in separate processes.

Two trainers of the same recipe are built side by side: one over the split decoded into memory
(``data.streaming=never``), one streaming it from disk (``data.streaming=always``, DataLoader
workers decode and resize, the views are made batched as always). They take turns, ``--steps``
training steps per round, so load from other users of a shared machine hits both alike; the
table gives every round and the medians. CPU seconds per step count the training process and
its DataLoader workers (psutil). Each streaming round starts its workers afresh (their start-up
is timed, against streaming) so that no batch is decoded ahead during the other trainer's round.
A step is ``Trainer.train_step(step)``, what the training loop runs.

    python eval/scripts/bench_streaming.py RECIPE [key=value ...] [--steps 15 --rounds 4 --warmup 3 --workers 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import psutil
import torch

from selfsup import Trainer, build_method, load_config, open_split
from selfsup.engine.build import make_accelerator


def _cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU seconds of ``proc`` and its live children (the DataLoader workers)."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="recipe path or packaged name")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    trainers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode, extra in (("memory", ["data.streaming=never"]),
                            ("streaming", ["data.streaming=always", f"data.workers={args.workers}"])):
            cfg = load_config(args.recipe, [*args.overrides, *extra, f"run.dir={tmp}/{mode}"])
            data = open_split(cfg.data, "train", seed=cfg.trainer.seed)
            trainer = Trainer(cfg, build_method(cfg, data), data, f"{tmp}/{mode}", make_accelerator(cfg))
            trainer.model.train()
            trainers[mode] = trainer
        batch = cfg.trainer.batch_size
        proc = psutil.Process()
        next_step = {mode: 0 for mode in trainers}
        for mode, trainer in trainers.items():  # warm-up (allocator, first-touch), untimed
            for _ in range(args.warmup):
                trainer.train_step(next_step[mode])
                next_step[mode] += 1
            if trainer.stream is not None:
                trainer.stream.close()
        rows = {mode: [] for mode in trainers}
        for r in range(args.rounds):
            for mode, trainer in trainers.items():
                cpu0, t0 = _cpu_seconds(proc), time.perf_counter()
                for _ in range(args.steps):
                    trainer.train_step(next_step[mode])
                    next_step[mode] += 1
                wall, cpu = time.perf_counter() - t0, _cpu_seconds(proc) - cpu0
                if trainer.stream is not None:
                    trainer.stream.close()
                rows[mode].append({"round": r, "images_per_s": args.steps * batch / wall,
                                   "cpu_s_per_step": cpu / args.steps})
                print(json.dumps({"mode": mode, **rows[mode][-1]}), flush=True)
    med = {mode: {key: statistics.median(row[key] for row in rs) for key in ("images_per_s", "cpu_s_per_step")}
           for mode, rs in rows.items()}
    ratios = [s["images_per_s"] / m["images_per_s"] for m, s in zip(rows["memory"], rows["streaming"])]
    print(json.dumps({"median": med, "streaming_over_memory_per_round": ratios,
                      "streaming_over_memory_median": statistics.median(ratios),
                      "batch_size": batch, "workers": args.workers, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
