"""How many CPU threads selfsup computes with (``run.threads``, env ``SELFSUP_THREADS``).

One process holds several thread pools, each sized on its own to every core the machine shows:
torch's intra-op pool (OpenMP, MKL), faiss's own OpenMP runtime and OpenBLAS, numpy's OpenBLAS.
In a container whose CPU quota is smaller than the machine, or beside another job, these pools
oversubscribe the cores, and OpenMP's spinning barriers then wait a scheduler slice per parallel
region: a linear probe that takes 1 s with one thread ran for minutes. So every pool is sized once,
at the entry of ``selfsup`` commands and of :func:`selfsup.train` / :func:`selfsup.evaluate_run`,
to one number chosen here:

- ``run.threads=N`` (a positive integer) wins; else
- ``SELFSUP_THREADS=N`` in the environment; else ``OMP_NUM_THREADS=N`` when set; else
- ``auto``: the cores this process may actually use, ``len(os.sched_getaffinity(0))`` capped by the
  cgroup CPU quota (``/sys/fs/cgroup/cpu.max``, or cgroup v1's ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``),
  divided among the local processes of a multi-process launch (``LOCAL_WORLD_SIZE``).

Beside other jobs, a thread of a pool is often off its core when the others reach a barrier; OpenMP's
default then spins, burning the very core the late thread waits for (2 cores shared with a training
run: the digits linear probe took 84 s with 2 spinning threads, 9 s with 1). So the ``selfsup``
command, started on a busy machine, sets ``OMP_WAIT_POLICY=PASSIVE`` before torch and faiss load
(:func:`passive_openmp_wait`; an ``OMP_WAIT_POLICY`` already set is kept): waiting threads sleep, and
the same probe took 13 s with 2 threads. On an idle machine spinning is faster (7% more images/s for
SimCLR on digits), so there the runtime's default stays. Python scripts that ``import selfsup`` can set it themselves before importing torch.
DataLoader workers (:func:`selfsup.data.step_loader.default_workers`)
and the image-decoding threads use :func:`available_cores` too, and child processes inherit the
choice through ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS``.
"""
from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Mapping

from selfsup.core.errors import ConfigError

ENV = "SELFSUP_THREADS"
CGROUP_ROOT = Path("/sys/fs/cgroup")
_CHILD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_applied: int | None = None
_why = "not applied"
_limits = None  # threadpoolctl's limiter, kept alive (it holds the limits)
log = logging.getLogger(__name__)


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in cores (e.g. 1.5), or ``None`` when unlimited or unknown.

    Reads cgroup v2's ``<root>/cpu.max`` ("QUOTA PERIOD", QUOTA ``max`` when unlimited), else v1's
    ``<root>/cpu/cpu.cfs_quota_us`` (-1 when unlimited) and ``cpu.cfs_period_us``."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else _cores(quota, period)
    except (OSError, ValueError):
        pass
    try:
        quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
        period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        return _cores(quota, period)
    except (OSError, ValueError):
        return None


def _cores(quota: str, period: str) -> float | None:
    q, p = int(quota), int(period)
    return q / p if q > 0 and p > 0 else None


def available_cores(affinity: set[int] | None = None, quota: float | None = None, *, root: Path = CGROUP_ROOT) -> int:
    """The cores this process may use: its CPU affinity, capped by the cgroup quota rounded up; at least 1.

    ``affinity`` / ``quota`` default to this process's (``os.sched_getaffinity(0)``, :func:`cgroup_cpu_limit`)."""
    if affinity is None:
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    if quota is None:
        quota = cgroup_cpu_limit(root)
    cores = len(affinity) or 1
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota - 1e-9)))
    return max(1, cores)


def choose_threads(setting: int | str | None = "auto", env: Mapping[str, str] | None = None,
                   cores: int | None = None) -> tuple[int, str]:
    """``(threads, why)`` for ``run.threads=setting`` (see the module docstring for the order).

    Raises:
        ConfigError: ``setting`` or ``SELFSUP_THREADS`` is neither ``auto`` nor a positive integer.
    """
    env = os.environ if env is None else env
    explicit = _parse(setting, "run.threads")
    if explicit is not None:
        return explicit, f"run.threads={explicit}"
    from_env = _parse(env.get(ENV), ENV)
    if from_env is not None:
        return from_env, f"{ENV}={from_env}"
    omp = _int_or(env.get("OMP_NUM_THREADS"), 0)
    if omp > 0:
        return omp, f"OMP_NUM_THREADS={omp}"
    cores = available_cores() if cores is None else cores
    local = max(1, _int_or(env.get("LOCAL_WORLD_SIZE"), 1))
    threads = max(1, cores // local)
    return threads, f"auto: {cores} core(s) available" + (f" / {local} local processes" if local > 1 else "")


def _parse(value: int | str | None, name: str) -> int | None:
    """A positive thread count, or ``None`` for auto / unset."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if isinstance(value, bool) or number < 1 or str(number) != str(value).strip():
        raise ConfigError(f"{name} must be 'auto' or a positive number of CPU threads, got '{value}'")
    return number


def _int_or(value: str | None, default: int) -> int:
    try:
        return int(value) if value else default
    except ValueError:
        return default


def machine_is_busy(load: float | None = None, cpus: int | None = None) -> bool:
    """Whether other work already runs here: the 1-minute load average is at least half the CPUs the
    system shows (``/proc/loadavg`` counts the whole machine, so compare with the whole machine)."""
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            return False
    cpus = cpus or os.cpu_count() or 1
    return load >= 0.5 * cpus


def passive_openmp_wait(env: dict | None = None, busy: bool | None = None) -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` when the machine is busy (:func:`machine_is_busy`) and it is not
    set already; whether that can still take effect (the OpenMP runtimes read it when they load: before
    ``import torch`` / ``import faiss``). On an idle machine the runtime's default (spin briefly, then
    sleep) is kept: there, passive waits cost SimCLR ResNet-18 on digits 7% of its images/s
    (eval/results/threads-under-load-cpu-2026-12-02.md)."""
    env = os.environ if env is None else env
    if "OMP_WAIT_POLICY" in env or not (machine_is_busy() if busy is None else busy):
        return False
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return not any(name in sys.modules for name in ("torch", "faiss"))


def apply_threads(setting: int | str | None = "auto") -> int:
    """Size every CPU thread pool of this process (torch intra-op, faiss, OpenMP and BLAS through
    threadpoolctl) to :func:`choose_threads`'s number, and export it to child processes. Applying
    the same number again does nothing. Returns the number of threads."""
    global _applied, _limits, _why
    threads, why = choose_threads(setting)
    if threads == _applied:
        return threads
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    try:
        import faiss  # its own OpenMP runtime; threadpoolctl sees it only once faiss is loaded

        faiss.omp_set_num_threads(threads)
    except ImportError:
        pass
    _limits = threadpool_limits(limits=threads)
    for name in _CHILD_ENV:
        os.environ[name] = str(threads)
    _applied, _why = threads, why
    log.info(describe_threads())
    return threads


def describe_threads() -> str:
    """The last choice of :func:`apply_threads` as a line for the log, e.g. ``CPU threads: 2 (auto: 2 core(s) available)``."""
    return f"CPU threads: {_applied} ({_why}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')})"
