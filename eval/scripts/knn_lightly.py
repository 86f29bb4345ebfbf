"""Quality for speed: LightlySSL's SimCLR trained with our recipe, evaluated with our kNN protocol.

Measures kNN top-1 (k = 20 and 200) of LightlySSL's SimCLR after ``trainer.epochs`` of our
schedule, optionally with one of its parts swapped for ours (the switches below), to compare
with ``selfsup train`` on the same recipe. Results: eval/results/quality-vs-lightly-cpu-2026-11-22.md,
eval/results/speed-cpu-2026-11-21.md (last section). Needs the ``bench`` extra (``lightly``).

Trains the model of ``eval/scripts/bench_lightly.py`` (LightlySSL's ``SimCLRTransform`` through a
torch DataLoader of PIL images, ``SimCLRProjectionHead``, ``NTXentLoss``, torchvision resnet18)
for ``trainer.epochs`` with the recipe's schedule: SGD (momentum), peak lr = lr x batch / 256, linear
warm-up then cosine (``selfsup.core.schedules.warmup_cosine``), weight decay on weights only (our
``selfsup.engine.optim.param_groups``). The backbone is then evaluated exactly as ``selfsup eval``
evaluates ours (frozen features, weighted kNN, k = 20 and 200). Compare with

    selfsup train simclr-cifar10 data.name=imagefolder data.train=... data.val=... \\
        backbone.name=resnet18 backbone.small_stem=false trainer.batch_size=256 \\
        trainer.epochs=2 trainer.warmup_epochs=0.2

Run from the repository root (overrides as for ``selfsup train``)::

    python eval/scripts/knn_lightly.py --train /tmp/cifar10-jpeg/train --val /tmp/cifar10-jpeg/test \\
        [--selfsup-backbone] [--selfsup-views [--trainer-seeding]] [--joint-forward] \\
        trainer.epochs=2 trainer.warmup_epochs=0.2

Prints one JSON line.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_lightly.py, the script beside this one
from bench_lightly import build_lightly, lightly_step


class selfsup_view_batches:
    """Batches of ``(views, labels)`` made by selfsup's ViewMaker from the in-memory uint8 split,
    in a fresh seeded permutation each epoch (last partial batch dropped, as the DataLoader)."""

    def __init__(self, cfg, data, batch_size: int, trainer_seeding: bool = False):
        from selfsup import ViewMaker, build_method
        from selfsup.engine.trainer import EpochSampler

        self.views = ViewMaker(build_method(cfg, data).views, data.mean, data.std)
        self.data, self.batch_size, self.seed = data, batch_size, cfg.trainer.seed
        self.generator = torch.Generator().manual_seed(cfg.trainer.seed)
        self.sampler = EpochSampler(len(data), batch_size, cfg.trainer.seed) if trainer_seeding else None
        self.step = 0

    def __len__(self) -> int:
        return len(self.data) // self.batch_size

    def __iter__(self):
        from selfsup.engine.trainer import view_seed

        order = torch.randperm(len(self.data), generator=self.generator)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            if self.sampler is not None:  # the Trainer's data order and per-step view seeds
                idx = self.sampler.indices(self.step, 0, 1)
                self.generator.manual_seed(view_seed(self.seed, self.step, 0, 0))
            self.step += 1
            yield self.views(self.data.images[idx], self.generator), self.data.labels[idx]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", default="/tmp/cifar10-jpeg/train")
    p.add_argument("--val", default="/tmp/cifar10-jpeg/test")
    p.add_argument("--recipe", default="simclr-cifar10", help="recipe path or packaged name")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--small-stem", action="store_true")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: cores)")
    p.add_argument("--joint-forward", action="store_true",
                   help="both views in one backbone call (batch norm over both, as selfsup's SimCLR)")
    p.add_argument("--selfsup-backbone", action="store_true",
                   help="selfsup's backbone (timm resnet18) in LightlySSL's pipeline, instead of torchvision's")
    p.add_argument("--selfsup-views", action="store_true",
                   help="selfsup's batched ViewMaker on the decoded uint8 images instead of LightlySSL's "
                        "per-image PIL transform (same recipe), to tell an augmentation difference apart")
    p.add_argument("--trainer-seeding", action="store_true",
                   help="with --selfsup-views: the Trainer's data order and per-step view seeds")
    p.add_argument("overrides", nargs="*", help="selfsup config overrides (trainer.epochs=2 ...)")
    args = p.parse_args(argv)
    if importlib.util.find_spec("lightly") is None:
        print("knn_lightly: LightlySSL is not installed: pip install -e '.[bench]'", file=sys.stderr)
        return 2

    from selfsup import evaluate, load_config, open_split
    from selfsup.core.schedules import scaled_lr, warmup_cosine
    from selfsup.engine.optim import param_groups

    cfg = load_config(args.recipe, ["data.name=imagefolder", f"data.train={args.train}", f"data.val={args.val}",
                                    "backbone.name=resnet18", f"backbone.small_stem={str(args.small_stem).lower()}",
                                    f"trainer.batch_size={args.batch_size}", *args.overrides])
    if args.workers is None:
        import os
        args.workers = len(os.sched_getaffinity(0))
    train_data = open_split(cfg.data, "train", seed=cfg.trainer.seed)
    model, criterion, _, loader = build_lightly(args, cfg, train_data.mean, train_data.std)
    t = cfg.trainer
    steps_per_epoch = len(loader)
    total = t.epochs * steps_per_epoch
    peak = scaled_lr(t.lr, args.batch_size, t.lr_scaling)
    lrs = warmup_cosine(peak, peak * t.min_lr, total, int(round(t.warmup_epochs * steps_per_epoch)))
    groups = param_groups(model, t.weight_decay)
    optimizer = torch.optim.SGD(groups, lr=float(lrs[0]), momentum=t.momentum)
    torch.manual_seed(t.seed)  # the DataLoader's shuffle
    if args.selfsup_views:
        loader = selfsup_view_batches(cfg, train_data, args.batch_size, args.trainer_seeding)
    step, start, losses = 0, time.perf_counter(), []
    for epoch in range(t.epochs):
        for (views, _labels) in loader:
            for group in optimizer.param_groups:
                group["lr"] = float(lrs[step])
            losses.append(lightly_step(model, criterion, optimizer, views, joint=args.joint_forward))
            step += 1
            if step % 20 == 0:
                print(f"step {step}/{total} loss {torch.stack(losses[-20:]).mean():.4f} "
                      f"{step * args.batch_size / (time.perf_counter() - start):.0f} images/s", flush=True)
    seconds = time.perf_counter() - start
    results = evaluate(model.backbone, train_data, open_split(cfg.data, "val", seed=cfg.trainer.seed), cfg.eval, protocols=["knn"])
    print(json.dumps({"joint_forward": args.joint_forward, "selfsup_backbone": args.selfsup_backbone,
                      "selfsup_views": args.selfsup_views, "trainer_seeding": args.trainer_seeding, "seed": t.seed, "epochs": t.epochs, "steps": total, "train_seconds": seconds,
                      "images_per_s": total * args.batch_size / seconds, **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
