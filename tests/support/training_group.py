"""The 2-process training group: distributed training is the single-process computation on the global batch.

One group of 2 CPU processes (gloo) is spawned once per test session (the ``two_and_one`` fixture in
tests/conftest.py, ~20 s in all); inside it, every registered method takes 3 optimizer steps through
the real trainer (Accelerate DDP, SyncBN, gathers, MoCo's queue, DINO's centre, gradient
accumulation) on fixed global batches with identical views, in float64, and the results are compared
with the same steps taken by the test process on the whole global batch: the loss of every step, the
parameter update of the first step (plain SGD, no weight decay, no warm-up: the update is -lr x
gradient, so a gradient off by the world size cannot hide), the parameters and buffers (queue,
centre, BN running statistics) after every step, on both ranks. The same group also runs the
collectives (SyncBN in fp32 against float64 BatchNorm, the logged means, the path broadcast) and
`selfsup train` twice (uninterrupted, and stopped and resumed) to check what rank 0 alone writes and
that the resumed run ends where the other does.

The checks are in tests/engine/test_trainer.py, tests/core/test_distributed.py and tests/runs/test_train.py.
"""
from __future__ import annotations

import os
import traceback
from pathlib import Path

import torch
import torch.multiprocessing as mp

from selfsup.config import load_config
from selfsup.methods import METHODS
from support import WORLD, free_port, join_ranks

GLOBAL_BATCH = 16
STEPS = 3
REL = 1e-5
ATOL = 1e-10  # float64 runs: real differences are > 1e-3, rounding ones ~1e-14

# (case name, method, extra overrides, whether 2 processes must match 1 process)
CASES = [(name, name, [], True) for name in METHODS.names()] + [
    ("moco-no-shuffle-bn", "moco", ["method.shuffle_bn=false"], True),  # the key encoder's BN is synchronised too
    ("simclr-grad-accum", "simclr", ["trainer.grad_accum=2"], True),  # DDP no_sync + division by grad_accum
    # The control: per-process BN statistics are not the global batch's, so the test can tell.
    ("simclr-no-sync-bn", "simclr", ["trainer.sync_bn=false"], False),
]


def case_config(method: str, extra: list[str], run_dir: Path):
    # Each method's own tiny settings (small heads, every code path on): its steps cost milliseconds.
    small = [f"method.{k}={v}" for k, v in METHODS.get(method).tiny.items()]
    backbone = ["backbone.name=test_resnet", "backbone.small_stem=true"]
    # A method that needs patch tokens (MAE, iBOT, I-JEPA) or whose recipe trains a ViT (MoCo v3's frozen patch
    # projection): a one-block ViT with 4-px patches (16 tokens)
    if METHODS.get(method).needs_vit or load_config(f"{method}-digits").backbone.name.startswith("vit"):
        backbone = ["backbone.name=vit_tiny_patch16_224", "backbone.small_stem=false",
                    "backbone.model_args={img_size: 16, patch_size: 4, depth: 1, embed_dim: 32, num_heads: 2}"]
    return load_config(f"{method}-digits", [
        f"method.name={method}", *small, "data.name=synthetic", "data.num_samples=32", "data.image_size=16",
        "data.num_classes=4", *backbone,
        f"trainer.batch_size={GLOBAL_BATCH}", "trainer.epochs=2", "trainer.warmup_epochs=0", "trainer.optimizer=sgd",
        "trainer.lr=0.4", "trainer.lr_scaling=none", "trainer.weight_decay=0", "trainer.momentum=0.9",
        "trainer.sync_bn=true", "eval.at_end=false", f"run.dir={run_dir}", *extra,
    ])


def run_case(method: str, extra: list[str], run_dir: Path, rank: int, world: int) -> dict:
    """``STEPS`` trainer steps of one case; this process's share of fixed global batches."""
    from selfsup.data import open_split
    from selfsup.engine.build import build_method, make_accelerator
    from selfsup.engine.trainer import Trainer

    cfg = case_config(method, extra, run_dir)
    acc = make_accelerator(cfg)
    assert (acc.num_processes, acc.process_index) == (world, rank)
    data = open_split(cfg.data, "train", seed=cfg.trainer.seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # float64 throughout: what is left of a difference is a real one
    try:
        trainer = Trainer(cfg, build_method(cfg, data), data, run_dir, acc)
        return _steps(trainer, data, cfg.trainer.grad_accum, rank, world)
    finally:
        torch.set_default_dtype(default)


def _steps(trainer, data, accum: int, rank: int, world: int) -> dict:
    block = GLOBAL_BATCH // (WORLD * accum)  # rows of one (process, micro-batch) in the 2-process run
    before = {k: p.detach().clone() for k, p in trainer.method.named_parameters()}
    out: dict = {"loss": [], "state": [], "update": None}
    for step in range(STEPS):
        # Identical views however many processes: made for the whole global batch with one seed
        # (the trainer's own per-process seeding is what makes ranks differ in real runs).
        images = data.images[(torch.arange(GLOBAL_BATCH) + 7 * step) % len(data)]
        views = [v.double() for v in trainer.view_maker(images, torch.Generator().manual_seed(100 + step))]
        labels = data.labels[(torch.arange(GLOBAL_BATCH) + 7 * step) % len(data)]
        # Micro-batch m of 1 process = the m-th micro-batches of every process, in rank order.
        owners = range(WORLD) if world == 1 else [rank]
        micro = []
        for m in range(accum):
            rows = torch.cat([torch.arange(block) + (r * accum + m) * block for r in owners])
            micro.append(([v[rows] for v in views], labels[rows]))
        torch.manual_seed(1000 + step)  # the global RNG (MoCo's shuffle, jigsaw's puzzles) is alike on every rank
        result = trainer.optimize(step, micro)
        loss = result["loss"].detach().clone()
        if world > 1:
            torch.distributed.all_reduce(loss)
            loss /= world
        out["loss"].append(float(loss))
        if step == 0:
            out["update"] = {k: p.detach() - before[k] for k, p in trainer.method.named_parameters()}
        out["state"].append({k: v.detach().clone() for k, v in trainer.method.state_dict().items()})
    return out


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    results = {}
    try:
        for case, method, extra, _ in CASES:
            results[case] = run_case(method, extra, Path(out_dir) / f"run-{case}", rank, WORLD)
        results["collectives"] = _collectives(rank)
        _train_runs(Path(out_dir))
    except BaseException:
        results["error"] = traceback.format_exc()
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def syncbn_inputs():
    """fp32 activations far from zero mean (where E[x^2] - E[x]^2 would lose digits), output weights."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 5, 5, generator=gen) * 3 + 40
    return x, torch.randn(8, 3, 5, 5, generator=gen)


def syncbn(module: torch.nn.Module, x: torch.Tensor, g: torch.Tensor, steps: int = 2) -> dict:
    """Two training-mode passes of ``module`` on ``x``: outputs, gradients, running statistics."""
    x = x.clone().requires_grad_()
    for _ in range(steps):
        y = module(x)
    (y * g).sum().backward()
    return {"y": y.detach(), "x_grad": x.grad, "w_grad": module.weight.grad.clone(), "b_grad": module.bias.grad.clone(),
            "running_mean": module.running_mean.clone(), "running_var": module.running_var.clone()}


def _collectives(rank: int) -> dict:
    from selfsup.core.distributed import (
        SyncBatchNorm,
        broadcast_path,
        mean_over_processes,
    )

    x, g = syncbn_inputs()
    half = slice(rank * 4, rank * 4 + 4)
    sync = syncbn(SyncBatchNorm(3), x[half], g[half])
    for key in ("w_grad", "b_grad"):  # each rank's loss is its rows' share: the total is the sum
        torch.distributed.all_reduce(sync[key])
    return {"means": mean_over_processes({"loss": float(rank), "acc": 2.0 * rank, "skipped": None}),
            "path": broadcast_path(Path(f"/ckpt/from-rank-{rank}.pt") if rank == 0 else None), "syncbn": sync}


TRAIN = ["data.name=synthetic", "data.num_samples=64", "data.image_size=16", "data.num_classes=4",
         "backbone.name=test_resnet", "backbone.small_stem=true", "method.proj_hidden_dim=32", "method.proj_dim=16",
         f"trainer.batch_size={GLOBAL_BATCH}", "trainer.epochs=1", "trainer.warmup_epochs=0.5", "trainer.log_every=1",
         "trainer.checkpoint_every=2", "trainer.lr=0.5", "eval.knn_k=[3]", "eval.linear=false",
         "eval.random_baseline=false", "run.tensorboard=false", "run.plots=false"]


def _train_runs(out_dir: Path) -> None:
    """``selfsup train`` in 2 processes: uninterrupted, and stopped after 2 steps then resumed."""
    from selfsup.runs.train import train

    train(load_config("simclr-digits", [*TRAIN, f"run.dir={out_dir / 'full'}"]))
    train(load_config("simclr-digits", [*TRAIN, f"run.dir={out_dir / 'part'}", "trainer.max_steps=2",
                                        "eval.at_end=false"]))
    train(load_config("simclr-digits", [*TRAIN, f"run.dir={out_dir / 'part'}"]))


def run_group(out_dir: Path) -> tuple[dict, dict, dict, Path]:
    """({case: rank 0's results}, {case: rank 1's}, {case: this single process's}, the runs' folder)."""
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, str(out_dir))) for r in range(WORLD)]
    for p in procs:
        p.start()
    single = {}  # meanwhile, the reference: one process, the whole global batch
    try:
        for case, method, extra, _ in CASES:
            single[case] = run_case(method, extra, out_dir / f"single-{case}", rank=0, world=1)
    except BaseException:
        join_ranks(procs, out_dir, timeout=0)
        raise
    ranks = join_ranks(procs, out_dir)
    return ranks[0], ranks[1], single, out_dir


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """How far ``a`` is from the reference ``b``, in units of the tolerance: <= 1 passes.

    The tolerance is ``REL`` relative (norms) plus ``ATOL`` absolute, for tensors whose true value is
    zero (a bias right before a BN gets no gradient; its float64 rounding noise is ~1e-17)."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / (REL * b.norm() + ATOL))


def worst(a: dict, b: dict) -> tuple[float, str]:
    assert a.keys() == b.keys()
    for k in b:
        if not b[k].is_floating_point():  # queue pointers, num_batches_tracked
            assert torch.equal(a[k], b[k]), k
    return max((rel(a[k], b[k]), k) for k in b if b[k].is_floating_point())
