"""Data-parallel transfer (selfsup.transfer.loop): 2 CPU processes (gloo) train what 1 process trains on the
global batch; rank 0 alone writes and prints; a global batch that does not divide by the process count is refused.

The 2 processes are started once for the module (the ``two_ranks`` fixture), as torchrun would start them
(RANK / WORLD_SIZE / MASTER_* in the environment, so they join through Accelerate as under ``./launch.sh
transfer``), and run ``selfsup transfer segmentation`` through the CLI for each case of ``CASES``; meanwhile the
test process runs the same cases alone. Rank 1 is given its own ``run.dir``: nothing may appear there.

The data are the shared scenes with their 255 (ignored) border pixels made background: cross-entropy is a mean
over each process's labelled pixels, and the mean of the two halves' means is the global batch's mean only when
both halves hold equally many labelled pixels, i.e. with no ignored pixel (otherwise the processes' gradients are
weighted unequally, as under any DistributedDataParallel training).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from selfsup.cli import main
from selfsup.engine.checkpoint import latest_checkpoint
from selfsup.transfer.segmentation import run_segmentation
from support import WORLD, free_port

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-5
COMMON = ["train.batch_size=4", "train.checkpoint_every=0", "train.device=cpu"]
CASES = {  # name: overrides (besides data.root and run.dir)
    # the frozen encoder and the linear head (BN + 1x1 conv: the head's BN is synchronised), 2 AdamW steps
    "frozen": [*COMMON, "model.head=linear", "model.norm=frozen", "train.steps=2"],
    # the whole encoder trains, its BN statistics too (over the global batch), 1 step
    "sync": [*COMMON, "model.head=linear", "model.regime=full", "model.norm=sync", "train.steps=1"],
    # 3 does not divide by 2 processes
    "odd": ["train.batch_size=3", "train.steps=1", "train.device=cpu"],
}

WORKER = """
import contextlib, io, json, os, sys
import torch
torch.set_num_threads(1)
from selfsup.cli import main
encoder, data, out, cases = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
rank = int(os.environ["RANK"])
results = {}
for name, overrides in cases.items():
    run_dir = f"{out}/{name}" if rank == 0 else f"{out}/rank{rank}-{name}"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["transfer", "segmentation", encoder, f"data.root={data}", *overrides, f"run.dir={run_dir}"])
    results[name] = {"code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump(results, f)
"""


@pytest.fixture(scope="module")
def unignored(scenes, tmp_path_factory):
    """The scenes with every 255 (ignored) mask pixel made background (0)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("unignored") / "s"
    shutil.copytree(scenes, root)
    for path in (root / "SegmentationClass").glob("*.png"):
        mask = np.array(Image.open(path))
        assert mask.dtype == np.uint8 and (mask == 255).any()  # there were ignored pixels to remove
        mask[mask == 255] = 0
        Image.fromarray(mask).save(path)
    return root


@pytest.fixture(scope="module")
def two_ranks(resnet_export, unignored, tmp_path_factory):
    """(out folder of the 2-process runs, [rank 0's CLI results, rank 1's], out folder of the 1-process runs)."""
    out, single = tmp_path_factory.mktemp("two"), tmp_path_factory.mktemp("one")
    port = free_port()
    procs = []
    for r in range(WORLD):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(r),
               "LOCAL_RANK": str(r), "WORLD_SIZE": str(WORLD), "LOCAL_WORLD_SIZE": str(WORLD), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(resnet_export), str(unignored), str(out),
                                       json.dumps(CASES)], env=env, stderr=subprocess.PIPE, text=True))
    try:  # meanwhile, the reference: one process, the whole global batch
        for name in ("frozen", "sync"):
            run_segmentation(resnet_export, [f"data.root={unignored}", *CASES[name], f"run.dir={single / name}"])
    finally:
        errors = [p.communicate(timeout=240)[1] for p in procs]
    for r, (p, err) in enumerate(zip(procs, errors)):
        assert p.returncode == 0, f"rank {r} failed:\n{err[-3000:]}"
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]
    return out, ranks, single


def _weights(run_dir) -> dict[str, torch.Tensor]:
    return latest_checkpoint(run_dir / "checkpoints")[1]["model"]


def _max_diff(a: dict, b: dict, keys) -> dict[str, float]:
    return {k: float((a[k].double() - b[k].double()).abs().max()) for k in keys}


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_train_the_weights_one_process_trains_on_the_global_batch(two_ranks):
    out, _, single = two_ranks
    two, one = _weights(out / "frozen"), _weights(single / "frozen")
    assert two.keys() == one.keys()
    diff = _max_diff(two, one, [k for k in one if one[k].is_floating_point()])
    assert max(diff.values()) <= TOL, {k: v for k, v in diff.items() if v > TOL}
    m2, m1 = (json.loads((d / "frozen" / "metrics.json").read_text()) for d in (out, single))
    assert abs(m2["final_loss"] - m1["final_loss"]) <= TOL  # the logged loss is the global batch's mean


@pytest.mark.slow
@pytest.mark.distributed
def test_sync_norm_running_statistics_are_the_global_batchs(two_ranks, resnet_export):
    out, _, single = two_ranks
    two, one = _weights(out / "sync"), _weights(single / "sync")
    stats = [k for k in one if k.endswith(("running_mean", "running_var"))]
    assert any(k.startswith("maps.encoder.") for k in stats) and any(k.startswith("head.") for k in stats)
    from safetensors.torch import load_file

    exported = load_file(str(resnet_export / "model.safetensors"))
    moved = [k for k in stats if k.startswith("maps.encoder.")
             and not torch.equal(one[k], exported[k.removeprefix("maps.encoder.")])]
    assert moved, "model.norm=sync left the encoder's BN statistics frozen"
    diff = _max_diff(two, one, stats)
    assert max(diff.values()) <= TOL, {k: v for k, v in diff.items() if v > TOL}


@pytest.mark.slow
@pytest.mark.distributed
def test_rank_0_alone_writes_and_prints(two_ranks):
    out, (rank0, rank1), _ = two_ranks
    for name in ("frozen", "sync"):
        assert rank0[name]["code"] == rank1[name]["code"] == 0
        assert json.loads(rank0[name]["stdout"])["task"] == "segmentation"  # one JSON line
        assert rank1[name]["stdout"] == "" and rank1[name]["stderr"] == ""
        assert not (out / f"rank1-{name}").exists()
        assert {p.name for p in (out / name).iterdir()} == {"checkpoints", "metrics.json", "config.yaml"}


@pytest.mark.slow
@pytest.mark.distributed
def test_a_global_batch_that_does_not_divide_is_refused_on_every_rank(two_ranks):
    for rank_result in two_ranks[1]:
        err = rank_result["odd"]["stderr"].strip()
        assert rank_result["odd"]["code"] == 2 and len(err.splitlines()) == 1, err
        assert "train.batch_size=3" in err and "does not divide by the 2 processes" in err


def test_the_divisibility_check_comes_before_any_collective(resnet_export, unignored, tmp_path, monkeypatch, capsys):
    import selfsup.transfer.loop as loop

    monkeypatch.setattr(loop, "world_size", lambda: 4)  # one process pretending to be 1 of 4: nothing to wait for
    code = main(["transfer", "segmentation", str(resnet_export), f"data.root={unignored}", "train.batch_size=6",
                 f"run.dir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.splitlines() == [err] and "train.batch_size=6" in err and "4 processes" in err
