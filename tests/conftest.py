"""Shared tiny fixtures. Plain helpers (TINY, tiny_net, join_ranks, ...) are in tests/support/."""
from __future__ import annotations

import os

import pytest
import torch

from selfsup.core.threads import available_cores

# Session fixtures that start a process group: every test using one runs on the same pytest-xdist worker
# (``--dist loadgroup``), so each group starts once per suite, not once per worker.
GROUPED_FIXTURES = ("two_and_one", "eval_ranks")


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject's addopts): one worker per core this process may use, at most 4 (each worker
    imports torch; tests that start process groups or trainings gain nothing from more)."""
    return max(1, min(4, available_cores()))


def pytest_configure(config):
    """Under pytest-xdist, split the cores between the workers (torch's intra-op threads): N workers with
    all cores each oversubscribe the CPU, and OpenMP's barriers spin (see ``one_thread``)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        torch.set_num_threads(max(1, available_cores() // workers))


def shares_a_module_fixture(item) -> bool:
    """Whether the test uses a module-scoped fixture (other than ``one_thread``): such a module's tests share
    what the fixture built (a trained run, the README's work folder, whose commands run in order), so they
    run on one worker, in order, and the fixture is built once rather than once per worker."""
    defs = getattr(item, "_fixtureinfo", None)
    defs = defs.name2fixturedefs if defs is not None else {}
    return any(name != "one_thread" and fixturedefs[-1].scope == "module" for name, fixturedefs in defs.items())


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    """Pin tests to workers (see GROUPED_FIXTURES, shares_a_module_fixture), then move the modules of the
    long poles (distributed tests: process groups, two-process launches) to the front, whole, so that under
    ``--dist loadgroup`` they start first and the rest of the suite runs beside them."""
    for item in items:
        for name in GROUPED_FIXTURES:
            if name in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(name))
        if shares_a_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    rank: dict[str, int] = {}
    for item in items:  # 0: a slow distributed test (two-process trainings), 1: a distributed test, 2: the rest
        here = 2 - bool(item.get_closest_marker("distributed")) * (1 + bool(item.get_closest_marker("slow")))
        module = item.nodeid.split("::")[0]
        rank[module] = min(rank.get(module, 2), here)
    items.sort(key=lambda item: rank[item.nodeid.split("::")[0]])  # stable: modules stay whole and in order


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models and tensors gain nothing from intra-op threads, and on a shared, oversubscribed CPU
    OpenMP's spinning barriers made such tests ~20x slower (GRU steps: 1.4 s instead of 0.07 s).
    A module asks for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def seeded():
    """The global torch RNG seeded with 0 before the test."""
    torch.manual_seed(0)


@pytest.fixture
def selfsup_cache(tmp_path, monkeypatch):
    """SELFSUP_CACHE (jigsaw's permutation sets, ...) in the test's own ``tmp_path / "cache"``."""
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def two_and_one(tmp_path_factory):
    """The 2-process training group (support/training_group.py), started once for the session:
    ({case: rank 0's results}, {case: rank 1's}, {case: this single process's}, the runs' folder)."""
    from support.training_group import run_group

    return run_group(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="session")
def eval_ranks(tmp_path_factory):
    """The 2-process evaluation group (support/eval_group.py), started once for the session:
    ([rank 0's results, rank 1's], the folder the ranks wrote in)."""
    from support.eval_group import run_group

    return run_group(tmp_path_factory.mktemp("dist-eval"))
