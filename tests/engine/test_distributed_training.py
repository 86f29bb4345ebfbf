"""Distributed training is the single-process computation on the global batch.

One group of 2 CPU processes (gloo) is spawned once for the module (~20 s in all); inside it, every
registered method takes 3 optimizer steps through the real trainer (Accelerate DDP, SyncBN,
gathers, MoCo's queue, DINO's centre, gradient accumulation) on fixed global batches with identical
views, in float64, and the results are compared with the same steps taken by this (single)
process on the whole global batch: the loss of every step, the parameter update of the first step
(plain SGD, no weight decay, no warm-up: the update is -lr x gradient, so a gradient off by the
world size cannot hide), the parameters and buffers (queue, centre, BN running statistics) after
every step, on both ranks. The same group also checks SyncBN in fp32 against float64 BatchNorm,
the logged means and the resume path, and runs `selfsup train` twice (uninterrupted, and stopped
and resumed) to check what rank 0 alone writes and that the resumed run ends where the other does.
"""
from __future__ import annotations

import json
import math
import os
import socket
import traceback
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from selfsup.config import load_config
from selfsup.methods import METHODS

WORLD = 2
GLOBAL_BATCH = 16
STEPS = 3
REL = 1e-5
ATOL = 1e-10  # float64 runs: real differences are > 1e-3, rounding ones ~1e-14

# Small heads so that every method's step costs milliseconds; keys a method lacks are skipped.
SMALL = {"proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 32, "hidden_dim": 32, "out_dim": 64,
         "bottleneck_dim": 16, "head_hidden_dim": 32, "queue_size": 40, "num_local_crops": 2,
         "num_permutations": 10, "freeze_last_layer_epochs": 0.0, "use_bn_in_head": True}

# (case name, method, extra overrides, whether 2 processes must match 1 process)
CASES = [(name, name, [], True) for name in METHODS.names()] + [
    ("moco-no-shuffle-bn", "moco", ["method.shuffle_bn=false"], True),  # the key encoder's BN is synchronised too
    ("simclr-grad-accum", "simclr", ["trainer.grad_accum=2"], True),  # DDP no_sync + division by grad_accum
    # The control: per-process BN statistics are not the global batch's, so the test can tell.
    ("simclr-no-sync-bn", "simclr", ["trainer.sync_bn=false"], False),
]


def case_config(method: str, extra: list[str], run_dir: Path):
    keys = {f.name for f in fields(METHODS.get(method).config_class)}
    small = [f"method.{k}={v}" for k, v in SMALL.items() if k in keys]
    return load_config(f"{method}-digits", [
        f"method.name={method}", *small, "data.name=synthetic", "data.num_samples=32", "data.image_size=16",
        "data.num_classes=4", "backbone.name=test_resnet", "backbone.small_stem=true",
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


def _syncbn_inputs():
    """fp32 activations far from zero mean (where E[x^2] - E[x]^2 would lose digits), output weights."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 5, 5, generator=gen) * 3 + 40
    return x, torch.randn(8, 3, 5, 5, generator=gen)


def _syncbn(module: torch.nn.Module, x: torch.Tensor, g: torch.Tensor, steps: int = 2) -> dict:
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

    x, g = _syncbn_inputs()
    half = slice(rank * 4, rank * 4 + 4)
    sync = _syncbn(SyncBatchNorm(3), x[half], g[half])
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_and_one(tmp_path_factory):
    """({case: rank 0's results}, {case: rank 1's}, {case: this single process's}, the runs' folder)."""
    out_dir = tmp_path_factory.mktemp("dist")
    ctx = mp.get_context("spawn")
    port = _free_port()
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


def join_ranks(procs: list, out_dir: Path, timeout: float = 240) -> list[dict]:
    """Wait for the rank processes (killing any still alive after ``timeout`` s) and load what each
    wrote to ``out_dir/rank{r}.pt``; a rank that died or reported an error fails the test."""
    try:
        for p in procs:
            p.join(timeout=timeout)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    results = []
    for r, p in enumerate(procs):
        path = out_dir / f"rank{r}.pt"
        assert path.exists(), f"rank {r} died (exit code {p.exitcode})"
        results.append(torch.load(path, weights_only=False))
        assert "error" not in results[-1], f"rank {r} failed:\n{results[-1]['error']}"
    return results


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """How far ``a`` is from the reference ``b``, in units of the tolerance: <= 1 passes.

    The tolerance is ``REL`` relative (norms) plus ``ATOL`` absolute, for tensors whose true value is
    zero (a bias right before a BN gets no gradient; its float64 rounding noise is ~1e-17)."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / (REL * b.norm() + ATOL))


def _worst(a: dict, b: dict) -> tuple[float, str]:
    assert a.keys() == b.keys()
    for k in b:
        if not b[k].is_floating_point():  # queue pointers, num_batches_tracked
            assert torch.equal(a[k], b[k]), k
    return max((_rel(a[k], b[k]), k) for k in b if b[k].is_floating_point())


@pytest.mark.parametrize("case", [c[0] for c in CASES if c[3]])
def test_two_processes_equal_one_process_on_the_global_batch(two_and_one, case):
    r0, r1, single = (x[case] for x in two_and_one[:3])
    for step in range(STEPS):
        assert math.isclose(r0["loss"][step], single["loss"][step], rel_tol=REL), (step, r0["loss"], single["loss"])
        assert r0["loss"][step] == r1["loss"][step]
    err, key = _worst(r0["update"], single["update"])
    assert err <= 1, f"first-step update of {key} differs by {err * REL:.2e} (relative)"
    assert any(u.abs().max() > 0 for u in single["update"].values())
    for step in range(STEPS):
        err, key = _worst(r0["state"][step], single["state"][step])
        assert err <= 1, f"after step {step + 1}, {key} differs by {err * REL:.2e} (relative)"
        for key, value in r0["state"][step].items():  # both ranks hold the same model, queue, centre
            assert torch.equal(value, r1["state"][step][key]), (step, key)


def test_the_comparison_detects_per_process_batch_norm(two_and_one):
    r0, _, single = (x["simclr-no-sync-bn"] for x in two_and_one[:3])
    assert not math.isclose(r0["loss"][0], single["loss"][0], rel_tol=1e-3)
    assert _worst(r0["update"], single["update"])[0] > 100  # relative differences > 1e-3


def test_moco_queue_and_dino_centre_move_and_agree(two_and_one):
    r0, r1, single, _ = two_and_one
    queue = [s["queue"] for s in single["moco"]["state"]]
    assert int(single["moco"]["state"][-1]["queue_ptr"]) == (STEPS * GLOBAL_BATCH) % 40  # wrapped around once
    assert not torch.equal(queue[0], queue[1])
    centre = [s["center"] for s in single["dino"]["state"]]
    assert centre[0].abs().sum() > 0 and not torch.equal(centre[0], centre[2])
    for step in range(STEPS):
        for rank_result in (r0, r1):
            assert _rel(rank_result["moco"]["state"][step]["queue"], queue[step]) <= 1
            assert _rel(rank_result["dino"]["state"][step]["center"], centre[step]) <= 1


def test_logged_scalars_are_global_batch_means_and_paths_come_from_rank_0(two_and_one):
    for rank_result in two_and_one[:2]:
        assert rank_result["collectives"]["means"] == {"loss": 0.5, "acc": 1.0, "skipped": None}
        assert rank_result["collectives"]["path"] == Path("/ckpt/from-rank-0.pt")


def test_two_process_run_writes_once_and_resumes_exactly(two_and_one):
    """One run directory written by rank 0 alone (each metrics row once, one encoder, one eval.json);
    a run stopped at a checkpoint and resumed on 2 processes ends with the uninterrupted run's weights."""
    from selfsup.engine.checkpoint import list_checkpoints, load_checkpoint

    out_dir = two_and_one[3]
    full, part = out_dir / "full", out_dir / "part"
    for run in (full, part):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2, 3, 4]
        assert (run / "encoder").is_dir() and (run / "config.yaml").is_file()
        assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-00000002.pt", "step-00000004.pt"]
    assert "knn_k3" in json.loads((full / "eval.json").read_text())
    a = load_checkpoint(list_checkpoints(full / "checkpoints")[-1])
    b = load_checkpoint(list_checkpoints(part / "checkpoints")[-1])
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    full_rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    part_rows = [json.loads(line) for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in full_rows] == [r["loss"] for r in part_rows]


def test_sync_batchnorm_in_fp32_matches_batchnorm_on_the_global_batch(two_and_one):
    """2-process fp32 SyncBN against float64 BatchNorm on the global batch: outputs, input and weight
    gradients, running statistics within 1e-5 of each tensor's scale, on activations far from zero
    mean (x ~ 40 +- 3, where a one-pass E[x^2] - E[x]^2 variance errs by 2e-5, the two-pass by 1e-7)."""
    x, g = _syncbn_inputs()
    exact = _syncbn(torch.nn.BatchNorm2d(3).double(), x.double(), g.double())
    r0, r1 = (r["collectives"]["syncbn"] for r in two_and_one[:2])
    for key in exact:
        ours = [torch.cat([r0[key], r1[key]])] if key in ("y", "x_grad") else [r0[key], r1[key]]  # rows / replicas
        for value in ours:
            err = float((value.double() - exact[key]).abs().max() / exact[key].abs().max())
            assert err <= REL, f"{key}: SyncBN differs by {err:.2e} of its scale"


def test_convert_sync_batchnorm_shares_state_keeps_keys_and_honours_exclusions():
    from timm.layers import BatchNormAct2d

    from selfsup.core.distributed import SyncBatchNorm, convert_sync_batchnorm

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.Sequential(torch.nn.BatchNorm1d(4)), BatchNormAct2d(4))
    keys, weight, running = list(model.state_dict()), model[1].weight, model[1].running_mean
    with pytest.warns(UserWarning, match="BatchNormAct2d"):  # a BN subclass is never swapped silently
        convert_sync_batchnorm(model, exclude=("2",))
    assert type(model[1]) is SyncBatchNorm and type(model[2][0]) is torch.nn.BatchNorm1d
    assert model[1].weight is weight and model[1].running_mean is running  # optimizer / EMA see the same tensors
    assert list(model.state_dict()) == keys  # checkpoints and exports load either way
    x = torch.randn(5, 4, 6, 6)
    assert torch.equal(model[1](x), torch.nn.functional.batch_norm(x, None, None, weight, model[1].bias, True))
