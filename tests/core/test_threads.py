"""Choosing and applying the CPU thread count (selfsup.core.threads): cgroup quota and affinity
parsing, the order run.threads > SELFSUP_THREADS > OMP_NUM_THREADS > auto, and that every pool
(torch, faiss's OpenMP, BLAS) gets the number."""
from __future__ import annotations

import os
import sys

import pytest

from selfsup.core.errors import ConfigError
from selfsup.core.threads import available_cores, cgroup_cpu_limit, choose_threads


def _write(root, name, text):
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize("text, cores", [("150000 100000\n", 1.5), ("200000 100000", 2.0), ("max 100000\n", None)])
def test_cgroup_v2_cpu_max(tmp_path, text, cores):
    _write(tmp_path, "cpu.max", text)
    assert cgroup_cpu_limit(tmp_path) == cores


@pytest.mark.parametrize("quota, cores", [("50000", 0.5), ("400000", 4.0), ("-1", None)])
def test_cgroup_v1_cfs_quota(tmp_path, quota, cores):
    _write(tmp_path, "cpu/cpu.cfs_quota_us", quota + "\n")
    _write(tmp_path, "cpu/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(tmp_path) == cores


def test_no_cgroup_files_means_no_limit(tmp_path):
    _write(tmp_path, "cpu.max", "garbage")
    assert cgroup_cpu_limit(tmp_path) is None
    assert cgroup_cpu_limit(tmp_path / "missing") is None


def test_available_cores_is_affinity_capped_by_quota(tmp_path):
    assert available_cores(set(range(8)), 1.5) == 2  # a 1.5-core quota: 2 threads, not 8
    assert available_cores(set(range(8)), 0.25) == 1
    assert available_cores({0, 1}, 16.0) == 2  # pinned to 2 cores of a big quota
    _write(tmp_path, "cpu.max", "300000 100000")
    assert available_cores(set(range(64)), root=tmp_path) == 3  # read from the cgroup files
    assert available_cores(set(range(64)), root=tmp_path / "none") == 64


def test_order_of_the_settings():
    env = {"SELFSUP_THREADS": "3", "OMP_NUM_THREADS": "5"}
    assert choose_threads(2, env, cores=8)[0] == 2  # run.threads wins
    assert choose_threads("auto", env, cores=8) == (3, "SELFSUP_THREADS=3")
    assert choose_threads("auto", {"OMP_NUM_THREADS": "5"}, cores=8)[0] == 5
    assert choose_threads("auto", {}, cores=8) == (8, "auto: 8 core(s) available")
    assert choose_threads("auto", {"SELFSUP_THREADS": "auto", "LOCAL_WORLD_SIZE": "4"}, cores=8)[0] == 2
    assert choose_threads(None, {"LOCAL_WORLD_SIZE": "4"}, cores=2)[0] == 1


@pytest.mark.parametrize("bad", [0, -1, "two", "1.5", True])
def test_bad_settings_are_one_line_errors(bad):
    with pytest.raises(ConfigError, match="run.threads must be 'auto' or a positive number"):
        choose_threads(bad, {}, cores=2)
    with pytest.raises(ConfigError, match="SELFSUP_THREADS must be"):
        choose_threads("auto", {"SELFSUP_THREADS": str(bad)}, cores=2)


@pytest.mark.parametrize("setting, env", [("auto", {"SELFSUP_THREADS": "1"}), (1, {})])
def test_apply_sizes_every_pool(monkeypatch, setting, env):
    import faiss
    import torch
    from threadpoolctl import threadpool_info

    from selfsup.core import threads

    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "SELFSUP_THREADS"):
        monkeypatch.setenv(name, "")  # recorded, so the values apply_threads sets are undone afterwards
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(threads, "_applied", None)
    before, faiss_before = torch.get_num_threads(), faiss.omp_get_max_threads()
    try:
        assert threads.apply_threads(setting) == 1
        assert torch.get_num_threads() == faiss.omp_get_max_threads() == 1
        assert {pool["num_threads"] for pool in threadpool_info()} == {1}  # both OpenMP runtimes, both BLAS
        assert os.environ["OMP_NUM_THREADS"] == "1"  # DataLoader workers and other children inherit it
    finally:
        threads._limits.restore_original_limits()
        torch.set_num_threads(before)
        faiss.omp_set_num_threads(faiss_before)


def test_cli_applies_the_choice_at_entry(monkeypatch):
    from selfsup import cli
    from selfsup.core import threads

    seen = []
    monkeypatch.setattr(threads, "apply_threads", lambda setting="auto": seen.append(setting) or 1)
    monkeypatch.setitem(cli.COMMANDS, "plot", lambda args: 0)
    assert cli.main(["plot", "somewhere"]) == 0
    assert seen == ["auto"]


def test_cli_bad_env_is_a_one_line_error(monkeypatch, capsys):
    from selfsup import cli

    monkeypatch.setenv("SELFSUP_THREADS", "zero")
    monkeypatch.setitem(cli.COMMANDS, "plot", lambda args: 0)
    assert cli.main(["plot", "somewhere"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("selfsup: error: SELFSUP_THREADS must be 'auto' or a positive") and err.count("\n") == 1


def test_passive_openmp_wait_keeps_a_users_setting(monkeypatch):
    from selfsup.core.threads import passive_openmp_wait

    env = {}
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.delitem(sys.modules, "faiss", raising=False)
    assert passive_openmp_wait(env, busy=True) is True and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert passive_openmp_wait(env, busy=True) is False and env == {"OMP_WAIT_POLICY": "ACTIVE"}
    env = {}
    assert passive_openmp_wait(env, busy=False) is False and env == {}  # idle: the runtime's default
    monkeypatch.undo()  # torch loaded: too late for this process, still set for its children
    env = {}
    assert passive_openmp_wait(env, busy=True) is False and env == {"OMP_WAIT_POLICY": "PASSIVE"}


def test_busy_means_a_load_of_half_the_cpus():
    from selfsup.core.threads import machine_is_busy

    assert machine_is_busy(load=1.0, cpus=2) and machine_is_busy(load=7.5, cpus=2)
    assert not machine_is_busy(load=0.9, cpus=2) and not machine_is_busy(load=3.0, cpus=16)


def test_the_choice_is_described(monkeypatch):
    from selfsup.core import threads

    monkeypatch.setattr(threads, "_applied", 3)
    monkeypatch.setattr(threads, "_why", "SELFSUP_THREADS=3")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert threads.describe_threads() == "CPU threads: 3 (SELFSUP_THREADS=3, OMP_WAIT_POLICY=PASSIVE)"
