"""SimCLR training throughput: selfsup versus LightlySSL, alternating in one process.

Measures images/s of the same SimCLR training step in both libraries, end to end (data, views,
model) and model only (pre-made views), and their ratios: ours / LightlySSL and end to end / model
only. Run from the repository root (CIFAR-10 JPEG unzipped to /tmp/cifar10-jpeg)::

    python eval/scripts/bench_lightly.py --train /tmp/cifar10-jpeg/train --rounds 5 --steps 8 --warmup 2

Results: eval/results/speed-cpu-2026-11-21.md, eval/results/speed-cpu-2026-11-22.md.

Both sides train SimCLR with the same ResNet-18 (standard stem), batch, augmentation recipe,
loss temperature, projection head size and optimizer (SGD, momentum 0.9) on the same
ImageFolder split:

* LightlySSL: its own pieces as its SimCLR example uses them: ``SimCLRTransform`` (crop scale,
  colour jitter 0.8 s with p=0.8, grayscale 0.2, no blur at 32 px, flip),
  ``SimCLRProjectionHead``, ``NTXentLoss``; torchvision's ``resnet18`` (``fc`` removed); a
  ``torch.utils.data.DataLoader`` over ``torchvision.datasets.ImageFolder`` (PIL decode and
  per-image augmentation in ``--workers`` worker processes, default: one per core).
* selfsup: the :class:`selfsup.engine.trainer.Trainer` built from the recipe (timm's ``resnet18``,
  the same architecture as torchvision's), data decoded once into one uint8 tensor, views made
  batched on the device; ``Trainer.train_step(step)`` per step (public API).

Rounds alternate the phases (LightlySSL end to end, ours end to end, ours model only,
LightlySSL model only), so a shared, noisy machine slows all of them alike; ratios are
medians of per-round ratios. Each LightlySSL round opens a fresh DataLoader iterator and
runs ``--warmup`` untimed steps first, so its workers neither steal CPU from our rounds nor
hand it batches prepared during them.

On a GPU both sides run on it (the device our trainer's Accelerator picks): LightlySSL's model
moves there, its batches are copied there each step (pinned memory) and ``trainer.precision``
(bf16 / fp16) is the autocast dtype of both sides; timings synchronise the GPU.

Needs the ``bench`` extra (``pip install -e '.[bench]'``, i.e. ``lightly``). Prints one line
per round and phase, then one JSON line.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", default="/tmp/cifar10-jpeg/train", help="ImageFolder training split")
    p.add_argument("--recipe", default="simclr-cifar10", help="recipe path or packaged name")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--small-stem", action="store_true", help="3x3 stride-1 stem, no max-pool (both sides)")
    p.add_argument("--workers", type=int, default=cores, help="LightlySSL DataLoader workers (default: cores)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=8, help="timed steps per phase and round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before each LightlySSL round")
    p.add_argument("--no-lightly-model-only", action="store_true", help="skip LightlySSL's model-only phase")
    p.add_argument("overrides", nargs="*", help="extra selfsup config overrides, key=value")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- selfsup


def build_ours(args: argparse.Namespace):
    """The selfsup Trainer for the recipe on ``args.train`` (its val split is not loaded)."""
    from selfsup import Trainer, build_method, load_config, open_split
    from selfsup.engine.build import make_accelerator

    overrides = ["data.name=imagefolder", f"data.train={args.train}", "backbone.name=resnet18",
                 f"backbone.small_stem={str(args.small_stem).lower()}", f"trainer.batch_size={args.batch_size}",
                 *args.overrides]
    cfg = load_config(args.recipe, overrides)
    acc = make_accelerator(cfg)
    data = open_split(cfg.data, "train", seed=cfg.trainer.seed)
    run_dir = tempfile.mkdtemp(prefix="bench-lightly-")
    trainer = Trainer(cfg, build_method(cfg, data), data, run_dir, acc)
    trainer.model.train()
    return cfg, data, trainer


# ----------------------------------------------------------------------------- LightlySSL


def torchvision_resnet18(small_stem: bool = False) -> nn.Module:
    """The backbone of LightlySSL's examples and ImageNet benchmarks: torchvision's ``resnet18`` with
    ``fc`` removed (``[B, 3, H, W] -> [B, 512]``); ``small_stem``: 3x3 stride-1 conv1, no max-pool."""
    import torchvision

    backbone = torchvision.models.resnet18()
    if small_stem:
        backbone.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        backbone.maxpool = nn.Identity()
    backbone.fc = nn.Identity()
    return backbone


class LightlySimCLR(nn.Module):
    """LightlySSL's SimCLR example model: torchvision resnet18 without ``fc`` + SimCLRProjectionHead.

    ``selfsup_backbone``: timm's resnet18 as ``selfsup`` builds it instead (its init zero-scales the
    last BN of every block), to tell a backbone difference from a pipeline difference.
    """

    def __init__(self, hidden_dim: int, out_dim: int, small_stem: bool, selfsup_backbone: bool = False):
        super().__init__()
        from lightly.models.modules import SimCLRProjectionHead

        if selfsup_backbone:
            from selfsup import create_backbone
            backbone = create_backbone("resnet18", small_stem=small_stem)
        else:
            backbone = torchvision_resnet18(small_stem)
        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(512, hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.backbone(x))


def build_lightly(args: argparse.Namespace, cfg, mean, std, device: torch.device | str = "cpu"):
    """LightlySSL's SimCLR with ``cfg``'s recipe on ``device``; returns (model, criterion, optimizer, loader)."""
    import torchvision
    from lightly.loss import NTXentLoss
    from lightly.transforms import SimCLRTransform

    m, t = cfg.method, cfg.trainer
    transform = SimCLRTransform(
        input_size=32 if cfg.data.image_size is None else cfg.data.image_size,
        cj_prob=0.8, cj_strength=m.color_strength, min_scale=float(m.crop_scale[0]),
        random_gray_scale=0.2, gaussian_blur=0.0, hf_prob=0.5,
        normalize={"mean": list(mean), "std": list(std)},
    )
    dataset = torchvision.datasets.ImageFolder(args.train, transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers, pin_memory=torch.device(device).type == "cuda")
    torch.manual_seed(t.seed)
    model = LightlySimCLR(m.proj_hidden_dim, m.proj_dim, args.small_stem,
                          getattr(args, "selfsup_backbone", False)).to(device)
    criterion = NTXentLoss(temperature=m.temperature)
    lr = t.lr * args.batch_size / 256
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=t.momentum, weight_decay=t.weight_decay)
    model.train()
    return model, criterion, optimizer, loader


def lightly_step(model, criterion, optimizer, views, joint: bool = False,
                 autocast: torch.dtype | None = None) -> torch.Tensor:
    """One SimCLR step as LightlySSL's example writes it (one backbone call per view, so batch
    norm sees each view alone); ``joint``: one call on both views, as selfsup's SimCLR does.
    ``views`` move to the model's device; ``autocast``: the mixed-precision dtype, or None (fp32)."""
    device = next(model.parameters()).device
    x0, x1 = (v.to(device, non_blocking=True) for v in views)
    with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
        if joint:
            z0, z1 = model(torch.cat([x0, x1])).chunk(2)
        else:
            z0, z1 = model(x0), model(x1)
        loss = criterion(z0, z1)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


# ----------------------------------------------------------------------------- timing


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn, steps: int) -> float:
    """Seconds per step of ``fn(i)`` over ``steps`` calls (queued GPU work included)."""
    _sync()
    start = time.perf_counter()
    for i in range(steps):
        fn(i)
    _sync()
    return (time.perf_counter() - start) / steps


def run(args: argparse.Namespace) -> dict:
    cfg, data, trainer = build_ours(args)
    model, criterion, optimizer, loader = build_lightly(args, cfg, data.mean, data.std, trainer.acc.device)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.trainer.precision)  # as ours
    step_lightly = functools.partial(lightly_step, model, criterion, optimizer, autocast=autocast)
    batch = args.batch_size

    (premade_views, _), = [next(iter(loader))]  # LightlySSL's model-only input, made once
    ours_premade = list(trainer.make_batches(0))
    for i in range(args.warmup):  # untimed: allocator and kernels warm for every phase
        trainer.train_step(i)
        step_lightly(premade_views)

    def lightly_round() -> float:
        it = iter(loader)  # fresh workers; warm-up steps absorb their start
        for _ in range(args.warmup):
            step_lightly(next(it)[0])
        seconds = timed(lambda i: step_lightly(next(it)[0]), args.steps)
        del it  # shuts the workers down before the next phase
        return seconds

    step = args.warmup
    phases = {
        "lightly": lightly_round,
        "ours": lambda: timed(lambda i: trainer.train_step(step + i), args.steps),
        "ours_model_only": lambda: timed(lambda i: trainer.optimize(step + i, ours_premade), args.steps),
    }
    if not args.no_lightly_model_only:
        phases["lightly_model_only"] = lambda: timed(
            lambda i: step_lightly(premade_views), args.steps)
    per_round: list[dict[str, float]] = []
    for r in range(args.rounds):
        seconds = {}
        for name, phase in phases.items():
            seconds[name] = phase()
            print(f"round {r + 1}/{args.rounds}  {name:<20} {batch / seconds[name]:7.1f} images/s", flush=True)
        per_round.append(seconds)
        step += args.steps

    def rate(name: str) -> float:
        return batch / statistics.median(s[name] for s in per_round)

    def ratio(num: str, den: str) -> float:  # median over rounds of rate(num) / rate(den)
        return statistics.median(s[den] / s[num] for s in per_round)

    result = {
        "batch_size": batch, "small_stem": args.small_stem, "workers": args.workers,
        "device": str(trainer.acc.device), "precision": cfg.trainer.precision,
        "threads": torch.get_num_threads(), "rounds": args.rounds, "steps": args.steps,
        "torch": torch.__version__, "lightly": _version("lightly"),
        "lightly_images_per_s": rate("lightly"),
        "ours_images_per_s": rate("ours"),
        "ours_over_lightly": ratio("ours", "lightly"),
        "ours_model_only_images_per_s": rate("ours_model_only"),
        "ours_end_to_end_over_model_only": ratio("ours", "ours_model_only"),
    }
    if not args.no_lightly_model_only:
        result["lightly_model_only_images_per_s"] = rate("lightly_model_only")
        result["lightly_end_to_end_over_model_only"] = ratio("lightly", "lightly_model_only")
    return result


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import lightly  # noqa: F401
    except ImportError:
        print("bench_lightly: LightlySSL is not installed: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    if not Path(args.train).is_dir():
        print(f"bench_lightly: --train {args.train} is not a folder (an ImageFolder split)", file=sys.stderr)
        return 2
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
