"""Eager vs torch.compile(trainer.model): SimCLR resnet18 standard stem, 32 px, batch 256, fp32, CPU.

Compiles the way ``trainer.compile=true`` is meant to (the prepared model compiled, the method
module left eager), then alternates rounds of model-only and end-to-end steps. From the
repository root, with CIFAR-10 JPEG in /tmp/cifar10-jpeg:

    python eval/speed/compile_speed.py ROUNDS STEPS [key=value ...]   # e.g. 3 5; one JSON line last

Results: eval/results/speed-cpu-2026-11-21.md.
"""
import json
import statistics
import sys
import tempfile
import time

import torch

from selfsup.config import load_config
from selfsup.data import open_split
from selfsup.engine.build import build_method, make_accelerator
from selfsup.engine.trainer import Trainer

rounds, steps = int(sys.argv[1]), int(sys.argv[2])
extra = sys.argv[3:]
base = ["data.name=imagefolder", "data.train=/tmp/cifar10-jpeg/train", "backbone.name=resnet18",
        "backbone.small_stem=false", "trainer.batch_size=256", "eval.at_end=false", *extra]
cfg = load_config("recipes/simclr-cifar10.yaml", base)
acc = make_accelerator(cfg)
data = open_split(cfg.data, "train", seed=cfg.trainer.seed)
trainers = {}
for name in ("eager", "compiled"):
    tr = Trainer(cfg, build_method(cfg, data), data, tempfile.mkdtemp(), acc)
    if name == "compiled":
        tr.model = torch.compile(tr.model)
    tr.model.train()
    premade = list(tr.make_batches(0))
    t = time.perf_counter()
    tr.optimize(0, premade); tr.optimize(1, premade)  # compiles (and the first float change)
    print(f"{name}: first two steps {time.perf_counter() - t:.1f} s", flush=True)
    trainers[name] = (tr, premade)
times = {f"{n}/{k}": [] for n in trainers for k in ("model_only", "end_to_end")}
step = 2
for r in range(rounds):
    for name, (tr, premade) in trainers.items():
        for kind in ("model_only", "end_to_end"):
            t = time.perf_counter()
            for i in range(steps):
                tr.optimize(step + i, premade if kind == "model_only" else tr.make_batches(step + i))
            times[f"{name}/{kind}"].append((time.perf_counter() - t) / steps)
            print(f"round {r+1} {name:9s} {kind:10s} {256 / times[f'{name}/{kind}'][-1]:7.1f} img/s", flush=True)
    step += steps
res = {k: 256 / statistics.median(v) for k, v in times.items()}
sp = statistics.median(a / b for a, b in zip(times["eager/model_only"], times["compiled/model_only"]))
print(json.dumps({"images_per_s": res, "compiled_over_eager_model_only": sp, "overrides": extra}))
