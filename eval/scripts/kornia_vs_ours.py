"""ViewMaker vs kornia.augmentation on a 256x3x32x32 uint8 batch (SimCLR CIFAR recipe, 2 views), CPU.

Measures milliseconds per call of selfsup's batched ViewMaker and of the same augmentations in
kornia (crop, flip, colour jitter, grayscale, normalise) on one random uint8 batch, in alternating
rounds of 5 calls, the medians and kornia's time over ours. Needs kornia (``pip install kornia``;
not a selfsup extra). Run from anywhere::

    python eval/scripts/kornia_vs_ours.py 9      # ROUNDS (default 7); prints one JSON line

Results: eval/results/speed-cpu-2026-11-21.md (section "kornia vs our ViewMaker").
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from selfsup import AugmentSpec, ViewMaker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rounds", type=int, nargs="?", default=7, help="alternating rounds of 5 calls (median)")
    args = parser.parse_args(argv)
    try:
        import kornia
        import kornia.augmentation as K
    except ImportError:
        print("kornia_vs_ours: kornia is not installed: pip install kornia", file=sys.stderr)
        return 2

    torch.manual_seed(0)
    x8 = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    spec = AugmentSpec.simclr(32, strength=0.5, crop_scale=(0.2, 1.0))
    vm = ViewMaker([(spec, 2)], mean, std)
    gen = torch.Generator().manual_seed(0)
    kaug = K.AugmentationSequential(
        K.RandomResizedCrop((32, 32), scale=(0.2, 1.0)),
        K.RandomHorizontalFlip(),
        K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
        K.RandomGrayscale(p=0.2),
        K.Normalize(torch.tensor(mean), torch.tensor(std)),
    )

    def ours():
        return vm(x8, gen)

    @torch.no_grad()
    def kor():
        x = x8.float().div_(255)
        return kaug(x.repeat(2, 1, 1, 1)).chunk(2)

    for f in (ours, kor):
        for _ in range(3):
            f()
    t = {"ours": [], "kornia": []}
    for _ in range(args.rounds):
        for name, f in (("ours", ours), ("kornia", kor)):
            s = time.perf_counter()
            for _ in range(5):
                f()
            t[name].append((time.perf_counter() - s) / 5)
    med = {k: statistics.median(v) * 1e3 for k, v in t.items()}
    ratios = statistics.median(k / o for o, k in zip(t["ours"], t["kornia"]))
    print(json.dumps({"torch": torch.__version__, "kornia": kornia.__version__, "threads": torch.get_num_threads(),
                      "ours_ms": med["ours"], "kornia_ms": med["kornia"], "kornia_over_ours_time": ratios}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
