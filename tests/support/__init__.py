"""Helpers shared by several test folders; tests/ is on the path, so a test file says ``from support import TINY``.

Fixtures (``one_thread``, ``seeded``, the 2-process groups) are in tests/conftest.py; the code the
2-process groups run is in support/training_group.py and support/eval_group.py, tiny methods for
tests/methods/ in support/methods.py.
"""
from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import torch
from torch import nn

from selfsup.config import load_config
from selfsup.engine.checkpoint import list_checkpoints, load_checkpoint

REPO = Path(__file__).resolve().parents[2]
CIFAR_ZIP = REPO.parent / "shared" / "data" / "cifar10-jpeg.zip"  # ../shared/data beside the clone, where it exists


# ----------------------------------------------------------------------------- a tiny training run

TINY = ["data.name=synthetic", "data.num_samples=64", "data.image_size=16", "data.num_classes=4",
        "backbone.name=test_resnet", "backbone.small_stem=true", "method.proj_hidden_dim=32", "method.proj_dim=16",
        "trainer.batch_size=16", "trainer.epochs=2", "trainer.warmup_epochs=1", "trainer.log_every=1",
        "trainer.optimizer=sgd", "trainer.lr=0.5", "eval.at_end=false", "eval.random_baseline=false"]


def tiny_config(run_dir, *extra):
    return load_config("simclr-digits", [*TINY, f"run.dir={run_dir}", *extra])


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final_state(run_dir):
    return load_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1])


def assert_same_tensors(a, b, where=""):
    """Bit-for-bit equality of two nested state dicts."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


# ----------------------------------------------------------------------------- a tiny encoder and features

def tiny_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    # Non-trivial running statistics, so a forward in train mode would give other numbers.
    net[1].running_mean.uniform_(-0.5, 0.5)
    net[1].running_var.uniform_(0.5, 2.0)
    return net


MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def count_extractions(monkeypatch) -> list[int]:
    """Spy on feature extraction: the list of the row counts it was run on, from now on."""
    import selfsup.evaluation.features as features_module

    calls = []
    real = features_module.extract_features

    def spy(*args, **kwargs):
        calls.append(len(args[1]))  # rows of an image tensor or of a split
        return real(*args, **kwargs)

    monkeypatch.setattr(features_module, "extract_features", spy)
    return calls


def clustered(
    n: int, num_classes: int, dim: int, spread: float, seed: int, centers: torch.Tensor | None = None
):
    """Gaussian clusters: labels [n] uniform, features [n, dim] = centre * spread + N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    if centers is None:
        centers = torch.randn(num_classes, dim, generator=g)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    return centers[labels] * spread + torch.randn(n, dim, generator=g), labels, centers


def split(n_train: int, n_test: int, num_classes: int, dim: int, spread: float, seed: int = 0):
    x_tr, y_tr, centers = clustered(n_train, num_classes, dim, spread, seed)
    x_te, y_te, _ = clustered(n_test, num_classes, dim, spread, seed + 1, centers)
    return x_tr, y_tr, x_te, y_te


# ----------------------------------------------------------------------------- sequence files

def write_sequences(path, n: int, seed: int, variable: bool = True) -> None:
    """Two classes told apart by the sign of feature 0's mean over the valid steps; T=9, D=3."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(size=(n, 9, 3)).astype(np.float32)
    x[:, :, 0] += np.where(y == 1, 1.5, -1.5)[:, None]
    lengths = rng.integers(3, 10, size=n) if variable else np.full(n, 9)
    for i, length in enumerate(lengths):
        x[i, length:] = 1e6  # whatever a file holds past the length must not matter
    np.savez(path, x=x, y=y, lengths=lengths, classes=np.array(["neg", "pos"]))


# ----------------------------------------------------------------------------- several processes

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
