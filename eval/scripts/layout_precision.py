"""channels_last x bf16 autocast on this CPU: SimCLR resnet18 standard stem, 32 px, batch 256.

Measures images/s of model-only steps (pre-made views) and end-to-end steps in four settings
(fp32, fp32 + channels_last, bf16, bf16 + channels_last), alternating per round, their medians and
each setting's model-only speed-up over fp32. Run from the repository root, with CIFAR-10 JPEG
unzipped to /tmp/cifar10-jpeg::

    python eval/scripts/layout_precision.py 3 5 [key=value ...]   # ROUNDS STEPS; one JSON line last

Results: eval/results/speed-cpu-2026-11-21.md (section "channels_last and bf16 autocast").
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from selfsup import Trainer, build_method, load_config, open_split
from selfsup.engine.build import make_accelerator

CONFIGS = {"fp32": [], "fp32+channels_last": ["trainer.channels_last=true"],
           "bf16": ["trainer.precision=bf16"], "bf16+channels_last": ["trainer.precision=bf16", "trainer.channels_last=true"]}


class BF16:
    """The accelerator with a CPU bf16 autocast: accelerate keeps one AcceleratorState (and so one
    mixed-precision setting) per process, so the bf16 trainers share the fp32 accelerator and swap
    in its ``autocast``; everything else is the accelerator's."""

    def __init__(self, accelerator):
        self.accelerator = accelerator

    def __getattr__(self, name):
        return getattr(self.accelerator, name)

    def autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rounds", type=int, help="interleaved rounds (median over them)")
    parser.add_argument("steps", type=int, help="timed steps per setting and round")
    parser.add_argument("overrides", nargs="*", help="extra config overrides, key=value (not trainer.precision)")
    parser.add_argument("--train", default="/tmp/cifar10-jpeg/train", help="ImageFolder training split")
    args = parser.parse_intermixed_args(argv)  # options may come between or after the positionals

    base = ["data.name=imagefolder", f"data.train={args.train}", "backbone.name=resnet18",
            "backbone.small_stem=false", "trainer.batch_size=256", "eval.at_end=false", *args.overrides]
    data = None
    trainers = {}
    for name, extra in CONFIGS.items():
        cfg = load_config("simclr-cifar10", base + [e for e in extra if "precision" not in e])
        acc = make_accelerator(cfg)
        data = data or open_split(cfg.data, "train", seed=cfg.trainer.seed)
        tr = Trainer(cfg, build_method(cfg, data), data, tempfile.mkdtemp(), acc)
        if "bf16" in name:
            tr.acc = BF16(acc)
        tr.model.train()
        premade = list(tr.make_batches(0))
        tr.optimize(0, premade)  # warm
        trainers[name] = (tr, premade)
    batch = cfg.trainer.batch_size
    times = {f"{n}/{k}": [] for n in CONFIGS for k in ("model_only", "end_to_end")}
    step = 1
    for r in range(args.rounds):
        for name, (tr, premade) in trainers.items():
            for kind in ("model_only", "end_to_end"):
                t = time.perf_counter()
                for i in range(args.steps):
                    tr.optimize(step + i, premade if kind == "model_only" else tr.make_batches(step + i))
                times[f"{name}/{kind}"].append((time.perf_counter() - t) / args.steps)
                print(f"round {r+1} {name:20s} {kind:10s} {batch / times[f'{name}/{kind}'][-1]:7.1f} img/s", flush=True)
        step += args.steps
    res = {k: batch / statistics.median(v) for k, v in times.items()}
    rel = {f"{n}/model_only_vs_fp32": statistics.median(a / b for a, b in zip(times["fp32/model_only"], times[f"{n}/model_only"]))
           for n in CONFIGS}
    print(json.dumps({"images_per_s": res, "speedup_model_only_vs_fp32": rel, "threads": torch.get_num_threads(),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
