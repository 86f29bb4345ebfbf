"""ViewMaker vs kornia.augmentation on a 256x3x32x32 uint8 batch (SimCLR CIFAR recipe, 2 views), CPU.

    pip install kornia && python eval/speed/kornia_vs_ours.py [ROUNDS]      # prints one JSON line

Results: eval/results/speed-cpu-2026-11-21.md.
"""
import json
import statistics
import sys
import time

import kornia
import kornia.augmentation as K
import torch

from selfsup.data.augment import AugmentSpec, ViewMaker

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
    for _ in range(3): f()
t = {"ours": [], "kornia": []}
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
for r in range(rounds):
    for name, f in (("ours", ours), ("kornia", kor)):
        s = time.perf_counter()
        for _ in range(5): f()
        t[name].append((time.perf_counter() - s) / 5)
med = {k: statistics.median(v) * 1e3 for k, v in t.items()}
ratios = statistics.median(k / o for o, k in zip(t["ours"], t["kornia"]))
print(json.dumps({"torch": torch.__version__, "kornia": kornia.__version__, "threads": torch.get_num_threads(),
                  "ours_ms": med["ours"], "kornia_ms": med["kornia"], "kornia_over_ours_time": ratios}))
