"""channels_last x bf16 autocast on this CPU: SimCLR resnet18 standard stem, 32 px, batch 256.

Model-only steps (premade views) and end-to-end steps, the four settings alternating per round,
median. From the repository root, with CIFAR-10 JPEG in /tmp/cifar10-jpeg:

    python eval/speed/layout_precision.py ROUNDS STEPS      # e.g. 3 5; prints one JSON line last

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
base = ["data.name=imagefolder", "data.train=/tmp/cifar10-jpeg/train", "backbone.name=resnet18",
        "backbone.small_stem=false", "trainer.batch_size=256", "eval.at_end=false"]
configs = {"fp32": [], "fp32+channels_last": ["trainer.channels_last=true"],
           "bf16": ["trainer.precision=bf16"], "bf16+channels_last": ["trainer.precision=bf16", "trainer.channels_last=true"]}
class BF16:
    """The accelerator with accelerate's CPU bf16 autocast (one AcceleratorState per process)."""
    def __init__(self, acc): self._acc = acc
    def __getattr__(self, name): return getattr(self._acc, name)
    def autocast(self): return torch.autocast("cpu", dtype=torch.bfloat16)

data = None
trainers = {}
for name, extra in configs.items():
    cfg = load_config("recipes/simclr-cifar10.yaml", base + [e for e in extra if "precision" not in e])
    acc = make_accelerator(cfg)
    data = data or open_split(cfg.data, "train", seed=cfg.trainer.seed)
    tr = Trainer(cfg, build_method(cfg, data), data, tempfile.mkdtemp(), acc)
    if "bf16" in name:
        tr.acc = BF16(acc)
    tr.model.train()
    premade = list(tr.make_batches(0))
    tr.optimize(0, premade)  # warm
    trainers[name] = (tr, premade)
times = {f"{n}/{k}": [] for n in configs for k in ("model_only", "end_to_end")}
step = 1
for r in range(rounds):
    for name, (tr, premade) in trainers.items():
        for kind in ("model_only", "end_to_end"):
            t = time.perf_counter()
            for i in range(steps):
                tr.optimize(step + i, premade if kind == "model_only" else tr.make_batches(step + i))
            times[f"{name}/{kind}"].append((time.perf_counter() - t) / steps)
            print(f"round {r+1} {name:20s} {kind:10s} {256 / times[f'{name}/{kind}'][-1]:7.1f} img/s", flush=True)
    step += steps
res = {k: 256 / statistics.median(v) for k, v in times.items()}
rel = {f"{n}/model_only_vs_fp32": statistics.median(a / b for a, b in zip(times["fp32/model_only"], times[f"{n}/model_only"])) for n in configs}
print(json.dumps({"images_per_s": res, "speedup_model_only_vs_fp32": rel, "threads": torch.get_num_threads(), "torch": torch.__version__}))
