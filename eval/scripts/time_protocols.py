"""Wall-clock timings of the frozen-feature protocols on this machine: kNN and the linear probe.

Measures the seconds of one kNN search (faiss exact, faiss IVF, torch) and of each linear-probe
solver (SGD softmax / hinge sweeps with refit, L-BFGS) on CIFAR-10-sized synthetic features, and
prints (``--out``: also writes) a markdown table. Run from the repository root::

    OMP_NUM_THREADS=2 python eval/scripts/time_protocols.py --out eval/results/eval-timings-cpu-DATE.md

Results: eval/results/eval-timings-cpu-2026-11-22.md.

Features are synthetic stand-ins of CIFAR-10's sizes (50k x 512 train, 10k x 512 test, 10
classes): overlapping Gaussian class clusters mixed by a random linear map and passed through
a ReLU, so dimensions are correlated and non-negative like pooled CNN features and the probe has
real work to do (linear top-1 about 0.5). kNN and SGD timings depend only on the sizes; L-BFGS
runs until it converges (at most max_iter), so its time also depends on the problem. Each
protocol runs once after a small warm-up call; the numbers are single runs.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import torch

from selfsup import knn_classify, linear_probe


def features(n_train: int, n_test: int, dim: int, classes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 0.1  # linear top-1 about 0.5, kNN about 0.25
    mix = torch.randn(dim, dim, generator=g) / dim**0.5
    y_train = torch.randint(0, classes, (n_train,), generator=g)
    y_test = torch.randint(0, classes, (n_test,), generator=g)
    x_train = (centres[y_train] + torch.randn(n_train, dim, generator=g)) @ mix
    x_test = (centres[y_test] + torch.randn(n_test, dim, generator=g)) @ mix
    return x_train.relu(), y_train, x_test.relu(), y_test  # non-negative, like pooled ReLU features


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the markdown table here")
    parser.add_argument("--n-train", type=int, default=50_000)
    parser.add_argument("--n-test", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--skip-lbfgs", action="store_true", help="leave out the L-BFGS reference (slowest row)")
    args = parser.parse_args()

    x_tr, y_tr, x_te, y_te = features(args.n_train, args.n_test, args.dim, 10)
    knn_classify(x_tr[:1000], y_tr[:1000], x_te[:100], y_te[:100])  # warm-up: thread pools, faiss
    rows = []

    def row(name, fn, note=""):
        seconds, result = timed(fn)
        key = next(iter(result))
        metrics = ", ".join(f"{k} top-1 {v['top1']:.4f}" for k, v in result.items())
        extra = {k: v for k, v in result[key].items() if k in ("lr", "weight_decay", "val_top1")}
        rows.append((name, seconds, metrics + (f"; chosen {extra}" if extra else ""), note))
        print(f"{name}: {seconds:.2f} s  {metrics} {extra}", flush=True)

    row("kNN k=20 and k=200 (one search), faiss exact (IndexFlatIP)",
        lambda: knn_classify(x_tr, y_tr, x_te, y_te, ks=(20, 200), backend="faiss"))
    row("kNN k=20 and k=200, torch matmul + topk on the CPU (the GPU code path)",
        lambda: knn_classify(x_tr, y_tr, x_te, y_te, ks=(20, 200), backend="torch", device="cpu"))
    row("kNN k=20 and k=200, faiss IVF (nlist 4*sqrt(N), nprobe 16)",
        lambda: knn_classify(x_tr, y_tr, x_te, y_te, ks=(20, 200), index="ivf"))
    row("linear probe, softmax, SGD: 5 lr x 4 wd grid (20 heads) on 90 % + refit on 100 %",
        lambda: linear_probe(x_tr, y_tr, x_te, y_te, progress=False))
    row("linear probe, hinge (Crammer-Singer), SGD: same grid + refit",
        lambda: linear_probe(x_tr, y_tr, x_te, y_te, loss="hinge", progress=False))
    if not args.skip_lbfgs:
        row("linear probe, softmax, L-BFGS: 4 wd (0, 1e-4, 1e-3, 1e-2) on 90 % + refit, max_iter 200",
            lambda: linear_probe(x_tr, y_tr, x_te, y_te, solver="lbfgs", progress=False),
            "the exact-optimum reference solver (warm-started regularisation path)")

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [
        f"# Frozen-feature protocol timings, CPU ({datetime.date.today().isoformat()})",
        "",
        f"Machine: {cpu}, {os.cpu_count()} logical cores visible, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), "
        f"Python {platform.python_version()}.",
        f"Features: synthetic, train {args.n_train} x {args.dim}, test {args.n_test} x {args.dim}, 10 classes "
        "(see eval/scripts/time_protocols.py's docstring).",
        "",
        "Command: `" + " ".join(["OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", ""), "python",
                                 *sys.argv]) + "`",
        "",
        "| protocol | wall time (s) | result | note |",
        "|---|---:|---|---|",
        *(f"| {name} | {seconds:.2f} | {metrics} | {note} |" for name, seconds, metrics, note in rows),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
