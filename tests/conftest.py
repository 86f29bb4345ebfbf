"""Shared tiny fixtures. Plain helpers (TINY, tiny_net, join_ranks, ...) are in tests/support/."""
from __future__ import annotations

import pytest
import torch


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
