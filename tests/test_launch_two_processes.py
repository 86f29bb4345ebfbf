"""`NPROC=2 ./launch.sh` really trains the default job (issue 4): two gloo processes on the CPU,
one run directory, and a kNN accuracy within noise of the same job in one process.

The job is the embedded default (SimCLR, ResNet-18, digits) shortened to ``EPOCHS`` epochs so
both runs fit in CI (about a minute each on 2 cores). "Within noise" is measured, not guessed: at
this length kNN top-1 (k=200) over seeds 0, 1, 2 was 0.783 / 0.808 / 0.816 with 1 process and
0.788 / 0.777 / 0.786 with 2 (eval/results/scaling-cpu-2026-11-22.md), a standard
deviation of about 0.015 per run, so two runs differ by about 0.021 (one sigma); ``TOLERANCE`` is
three of those. Both runs must also beat the randomly initialised encoder (0.563) by
``MARGIN_OVER_RANDOM``, so "within noise" cannot be met by two runs that learnt nothing.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support import free_port

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 5
TOLERANCE = 0.06  # on kNN top-1, k=200
MARGIN_OVER_RANDOM = 0.10

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def default_job(workdir: Path, nproc: int, *overrides: str) -> tuple[Path, str]:
    """Run ``./launch.sh`` (no recipe: the default job) with ``NPROC=nproc`` inside ``workdir``."""
    workdir.mkdir()
    run_dir = workdir / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "NNODES", "NODE_RANK", "MASTER_",
                                                                      "ACCELERATE_", "OMP_NUM"))}
    env.update(NPROC=str(nproc), MASTER_PORT=str(free_port()), PYTHON=sys.executable)
    done = subprocess.run(
        [str(ROOT / "launch.sh"), f"trainer.epochs={EPOCHS}", "trainer.warmup_epochs=1", f"run.dir={run_dir}",
         *overrides],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return run_dir, done.stdout + done.stderr


# What the runs skip, none of which touches the training (the weights, hence kNN, are those of the job measured
# above): the linear probes, which nothing here reads (~6 s of CPU per encoder, 4 encoders); in the 1-process run,
# the reference, also its plots, TensorBoard files and online monitor (which never changes the weights:
# tests/engine/test_monitor.py). The 2-process run keeps them: it is the run whose files are checked.
NOT_READ = ["eval.linear=false"]
REFERENCE_ONLY = ["run.plots=false", "run.tensorboard=false", "eval.online=false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("launch")
    one = default_job(root / "one", 1, *NOT_READ, *REFERENCE_ONLY)
    two = default_job(root / "two", 2, "eval.random_baseline=false", *NOT_READ)
    return one, two


def knn(run_dir: Path, name: str = "eval.json") -> float:
    return json.loads((run_dir / name).read_text())["knn_k200"]["top1"]


def test_two_processes_write_one_run_directory(runs):
    _, (run_dir, log) = runs
    assert re.search(r"x 2 processes", log), log[-2000:]  # really two processes, each with half the batch
    assert [p.name for p in run_dir.parent.iterdir()] == ["run"]  # nothing written beside it, e.g. by rank 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [f"step-{5 * EPOCHS:08d}.pt"]
    assert (run_dir / "encoder" / "model.safetensors").is_file() and (run_dir / "eval.json").is_file()
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines if '"loss"' in line]
    assert steps == sorted(set(steps)), "every step logged once (rank 0 only)"


def test_two_process_knn_is_within_noise_of_one_process(runs):
    (one_dir, _), (two_dir, _) = runs
    one, two, random_init = knn(one_dir), knn(two_dir), knn(one_dir, "eval_random_init.json")
    assert one > random_init + MARGIN_OVER_RANDOM and two > random_init + MARGIN_OVER_RANDOM, (one, two, random_init)
    assert abs(two - one) <= TOLERANCE, f"1 process {one:.3f}, 2 processes {two:.3f}: more apart than {TOLERANCE}"
