"""Eager vs torch.compile: SimCLR resnet18 standard stem, 32 px, batch 256, fp32, on this machine.

Measures images/s of model-only steps (pre-made views) and end-to-end steps for an eager trainer
and one built with ``trainer.compile=true`` (the prepared model compiled, the method module left
eager), in alternating rounds, their medians and the compiled / eager model-only speed-up. Run from
the repository root, with CIFAR-10 JPEG unzipped to /tmp/cifar10-jpeg::

    python eval/scripts/compile_speed.py 3 5 [key=value ...]    # ROUNDS STEPS; one JSON line last

Results: eval/results/speed-cpu-2026-11-21.md (section "torch.compile").
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

from selfsup import Trainer, build_method, load_config, open_split
from selfsup.engine.build import make_accelerator


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rounds", type=int, help="interleaved rounds (median over them)")
    parser.add_argument("steps", type=int, help="timed steps per setting and round")
    parser.add_argument("overrides", nargs="*", help="extra config overrides, key=value")
    parser.add_argument("--train", default="/tmp/cifar10-jpeg/train", help="ImageFolder training split")
    args = parser.parse_intermixed_args(argv)  # options may come between or after the positionals

    base = ["data.name=imagefolder", f"data.train={args.train}", "backbone.name=resnet18",
            "backbone.small_stem=false", "trainer.batch_size=256", "eval.at_end=false", *args.overrides]
    data, trainers = None, {}
    for name in ("eager", "compiled"):
        cfg = load_config("simclr-cifar10", [*base, f"trainer.compile={str(name == 'compiled').lower()}"])
        acc = make_accelerator(cfg)
        data = data or open_split(cfg.data, "train", seed=cfg.trainer.seed)
        tr = Trainer(cfg, build_method(cfg, data), data, tempfile.mkdtemp(), acc)
        tr.model.train()
        premade = list(tr.make_batches(0))
        t = time.perf_counter()
        tr.optimize(0, premade)
        tr.optimize(1, premade)  # compiles (and the first float change)
        print(f"{name}: first two steps {time.perf_counter() - t:.1f} s", flush=True)
        trainers[name] = (tr, premade)
    batch = cfg.trainer.batch_size
    times = {f"{n}/{k}": [] for n in trainers for k in ("model_only", "end_to_end")}
    step = 2
    for r in range(args.rounds):
        for name, (tr, premade) in trainers.items():
            for kind in ("model_only", "end_to_end"):
                t = time.perf_counter()
                for i in range(args.steps):
                    tr.optimize(step + i, premade if kind == "model_only" else tr.make_batches(step + i))
                times[f"{name}/{kind}"].append((time.perf_counter() - t) / args.steps)
                print(f"round {r+1} {name:9s} {kind:10s} {batch / times[f'{name}/{kind}'][-1]:7.1f} img/s", flush=True)
        step += args.steps
    res = {k: batch / statistics.median(v) for k, v in times.items()}
    sp = statistics.median(a / b for a, b in zip(times["eager/model_only"], times["compiled/model_only"]))
    print(json.dumps({"images_per_s": res, "compiled_over_eager_model_only": sp, "overrides": args.overrides}))


if __name__ == "__main__":
    main()
