"""launch.sh builds the right command: processes, machines, SLURM, Accelerate configs.

A fake Python interpreter stands in for the real one: asked for the GPU count it answers
``$FAKE_GPUS``; asked to run anything it prints the command line, so both the ``DRY_RUN=1``
output and what launch.sh really ``exec``s are checked without starting a training.
"""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAKE_PYTHON = """#!/bin/sh
if [ "$1" = "-c" ]; then echo "${FAKE_GPUS:-0}"; exit 0; fi
printf 'RAN'; for a in "$@"; do printf ' [%s]' "$a"; done; echo
"""


@pytest.fixture
def launch(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "fake-python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    # No real scontrol (a SLURM login node running the tests must not change the answers).
    path = ":".join(p for p in os.environ["PATH"].split(":") if not (Path(p) / "scontrol").exists())

    def run(*args: str, dry: bool = True, expect_rc: int = 0, **env: str) -> str:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "NPROC", "NNODES", "NODE_RANK",
                                                                          "MASTER_", "ACCELERATE_", "OMP_NUM"))}
        full = {**base, "PATH": f"{bin_dir}:{path}", "PYTHON": str(python), **env}
        if dry:
            full["DRY_RUN"] = "1"
        done = subprocess.run([str(ROOT / "launch.sh"), *args], env=full, capture_output=True, text=True, timeout=30)
        assert done.returncode == expect_rc, done.stderr
        return done.stdout + done.stderr

    run.bin_dir = bin_dir
    return run


def command(out: str) -> list[str]:
    """The printed command (last line of a dry run) as argv."""
    return shlex.split(out.strip().splitlines()[-1])


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_one_process_runs_plain_python(launch):
    argv = command(launch("recipes/simclr-cifar10.yaml", "trainer.epochs=1"))
    assert argv[1:] == ["-m", "selfsup", "train", "recipes/simclr-cifar10.yaml", "trainer.epochs=1"]


def test_nproc_2_on_cpu_starts_two_gloo_processes_through_accelerate(launch):
    out = launch("run.dir=/tmp/with space", NPROC="2")
    argv = command(out)
    assert argv[1:3] == ["-m", "accelerate.commands.launch"]
    assert "--multi_gpu" in argv and "--cpu" not in argv  # accelerate's --cpu would start a single process
    assert option(argv, "--num_processes") == "2" and option(argv, "--num_machines") == "1"
    assert argv[-4:] == ["-m", "selfsup", "train", "run.dir=/tmp/with space"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert f"OMP_NUM_THREADS={max(1, cores // 2)}" in out  # the cores are shared out, not oversubscribed


def test_transfer_first_runs_selfsup_transfer_with_the_same_process_logic(launch):
    one = command(launch("transfer", "detection", "exported/enc", "train.batch_size=8"))
    assert one[1:] == ["-m", "selfsup", "transfer", "detection", "exported/enc", "train.batch_size=8"]
    argv = command(launch("transfer", "segmentation", "exported/enc", "data.root=/d", NPROC="2", NNODES="2",
                          NODE_RANK="1", MASTER_ADDR="10.0.0.1"))
    assert argv[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" in argv
    assert option(argv, "--num_processes") == "4" and option(argv, "--machine_rank") == "1"
    assert argv[-6:] == ["-m", "selfsup", "transfer", "segmentation", "exported/enc", "data.root=/d"]
    assert command(launch("recipes/transfer.yaml"))[1:4] == ["-m", "selfsup", "train"]  # only the first word counts


def test_the_real_exec_is_the_printed_command(launch):
    ran = launch("trainer.max_steps=2", dry=False, NPROC="2").strip()
    assert ran.startswith("RAN [-m] [accelerate.commands.launch]") and "[--num_processes] [2]" in ran
    assert ran.endswith("[-m] [selfsup] [train] [trainer.max_steps=2]")


def test_all_local_gpus_by_default(launch):
    argv = command(launch(FAKE_GPUS="4"))
    assert option(argv, "--num_processes") == "4" and "--multi_gpu" in argv
    assert command(launch(FAKE_GPUS="1"))[1:] == ["-m", "selfsup", "train"]


def test_several_machines_from_torchrun_style_variables(launch):
    argv = command(launch("r.yaml", FAKE_GPUS="8", NNODES="2", NODE_RANK="1", MASTER_ADDR="10.0.0.1", MASTER_PORT="1234"))
    assert (option(argv, "--num_machines"), option(argv, "--machine_rank"), option(argv, "--num_processes"),
            option(argv, "--main_process_ip"), option(argv, "--main_process_port")) == ("2", "1", "16", "10.0.0.1", "1234")


@pytest.mark.parametrize("nodelist, first", [
    ("gpu[07-09,12],cpu1", "gpu07"), ("cpu1,gpu[07-09]", "cpu1"), ("rack[2-3]-n[5-6]", "rack2-n5"), ("node17", "node17"),
])
def test_slurm_variables_without_scontrol(launch, nodelist, first):
    argv = command(launch("r.yaml", FAKE_GPUS="4", SLURM_JOB_NODELIST=nodelist, SLURM_NNODES="3", SLURM_NODEID="2"))
    assert (option(argv, "--num_machines"), option(argv, "--machine_rank"), option(argv, "--num_processes"),
            option(argv, "--main_process_ip")) == ("3", "2", "12", first)


def test_slurm_uses_scontrol_when_there_is_one(launch):
    scontrol = launch.bin_dir / "scontrol"
    scontrol.write_text('#!/bin/sh\n[ "$1 $2 $3" = "show hostnames weird[1-2]" ] && printf "alpha\\nbeta\\n"\n')
    scontrol.chmod(0o755)
    argv = command(launch(FAKE_GPUS="2", SLURM_JOB_NODELIST="weird[1-2]", SLURM_NNODES="2", SLURM_NODEID="1"))
    assert option(argv, "--main_process_ip") == "alpha" and option(argv, "--machine_rank") == "1"


def test_explicit_variables_win_over_slurm_and_one_slurm_node_is_one_machine(launch):
    argv = command(launch(FAKE_GPUS="2", SLURM_JOB_NODELIST="n[1-2]", SLURM_NNODES="2", SLURM_NODEID="1",
                          MASTER_ADDR="head"))
    assert option(argv, "--main_process_ip") == "head"
    argv = command(launch(FAKE_GPUS="2", SLURM_JOB_NODELIST="n1", SLURM_NNODES="1", SLURM_NODEID="0"))
    assert option(argv, "--num_machines") == "1" and option(argv, "--main_process_ip") == "127.0.0.1"


def test_accelerate_config_is_passed_through(launch):
    argv = command(launch("r.yaml", ACCELERATE_CONFIG="fsdp.yaml", FAKE_GPUS="8"))
    assert option(argv, "--config_file") == "fsdp.yaml" and "--mixed_precision" not in argv


def test_bad_process_layout_is_refused(launch):
    out = launch(NNODES="2", NODE_RANK="2", expect_rc=2)
    assert "NODE_RANK" in out


def test_slurm_with_several_tasks_per_node_is_refused(launch):
    out = launch(FAKE_GPUS="8", SLURM_JOB_NODELIST="n[1-2]", SLURM_NNODES="2", SLURM_NODEID="0", SLURM_NTASKS="16",
                 expect_rc=2)
    assert "one task per node" in out
    argv = command(launch(FAKE_GPUS="8", SLURM_JOB_NODELIST="n[1-2]", SLURM_NNODES="2", SLURM_NODEID="0", SLURM_NTASKS="2"))
    assert option(argv, "--num_processes") == "16"
