"""Online monitoring (selfsup.engine.monitor): the collapse indicators against slow references, the online
kNN's rows at the configured interval, the online classifier leaving the training untouched, resume."""
import math

import numpy as np
import pytest
import torch

from selfsup.engine.checkpoint import list_checkpoints, load_checkpoint
from selfsup.engine.monitor import effective_rank, embedding_std
from selfsup.runs.train import train
from support import assert_same_tensors, read_metrics, tiny_config

MONITOR_KEYS = ("online_linear_loss", "online_linear_acc", "embedding_std", "effective_rank")


def _slow_effective_rank(z: np.ndarray) -> float:
    """Roy & Vetterli 2007, written out: p_i = s_i / sum_j s_j, rank = exp(-sum_i p_i log p_i)."""
    s = np.linalg.svd(z.astype(np.float64), compute_uv=False)
    total = sum(s)
    entropy = 0.0
    for value in s:
        p = value / total
        if p > 0:
            entropy -= p * math.log(p)
    return math.exp(entropy)


def _slow_embedding_std(z: np.ndarray) -> float:
    rows = [row / max(np.sqrt(sum(x * x for x in row)), 1e-12) for row in z.astype(np.float64)]
    stds = []
    for d in range(z.shape[1]):
        column = [row[d] for row in rows]
        mean = sum(column) / len(column)
        stds.append(math.sqrt(sum((x - mean) ** 2 for x in column) / len(column)))
    return sum(stds) / len(stds)


def test_effective_rank_of_a_known_rank_matrix_and_against_the_slow_reference():
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(64, 64, generator=gen))
    equal = q[:, :3] @ torch.eye(3, 16) * 5.0  # rank 3, three equal singular values
    assert effective_rank(equal) == pytest.approx(3.0, rel=1e-4)
    assert effective_rank(torch.ones(32, 8)) == pytest.approx(1.0, rel=1e-4)  # collapsed: rank one
    z = torch.randn(50, 12, generator=gen) * torch.linspace(0.1, 3, 12)
    assert effective_rank(z) == pytest.approx(_slow_effective_rank(z.numpy()), rel=1e-4)


def test_embedding_std_against_the_slow_reference_and_collapse():
    z = torch.randn(40, 6, generator=torch.Generator().manual_seed(1)) + 0.5
    assert embedding_std(z) == pytest.approx(_slow_embedding_std(z.numpy()), rel=1e-5)
    assert embedding_std(torch.ones(10, 6) * 3) == pytest.approx(0.0, abs=1e-6)  # every row the same


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same TINY run (8 steps) with the monitor off and on (kNN every 3 steps, rows every 4 steps)."""
    base = tmp_path_factory.mktemp("monitor")
    args = ("resume=never", "trainer.log_every=4", "eval.online_every_steps=3", "eval.online_knn_bank=32",
            "eval.online_knn_queries=16", "eval.online_knn_k=5")
    train(tiny_config(base / "off", *args, "eval.online=false"))
    train(tiny_config(base / "on", *args))
    return base


def test_online_knn_rows_appear_at_the_configured_interval(runs):
    rows = read_metrics(runs / "on")
    assert [r["step"] for r in rows] == [3, 4, 6, 8]  # log_every=4, plus the kNN's steps 3 and 6
    assert [r["step"] for r in rows if "knn_online" in r] == [3, 6]
    assert all(0 <= r["knn_online"] <= 1 for r in rows if "knn_online" in r)
    for row in rows:
        assert all(key in row and math.isfinite(row[key]) for key in MONITOR_KEYS), row
    assert not any(key in row for row in read_metrics(runs / "off") for key in (*MONITOR_KEYS, "knn_online"))


def test_the_monitor_never_changes_the_trained_weights(runs):
    """The online classifier's loss never reaches the encoder, the kNN leaves BN statistics and the
    RNG alone: the final model and optimizer state are bit-identical with the monitor on or off."""
    off, on = (load_checkpoint(list_checkpoints(runs / name / "checkpoints")[-1]) for name in ("off", "on"))
    assert_same_tensors(off["model"], on["model"], "model")
    assert_same_tensors(off["optimizer"], on["optimizer"], "optimizer")
    assert off["monitor"] is None and on["monitor"]["head"]["weight"].abs().sum() > 0  # the classifier learned


def test_resume_with_the_monitor_on_equals_the_uninterrupted_run(runs, tmp_path):
    args = ("trainer.log_every=4", "eval.online_every_steps=3", "eval.online_knn_bank=32",
            "eval.online_knn_queries=16", "eval.online_knn_k=5")
    train(tiny_config(tmp_path, *args, "trainer.max_steps=5", "trainer.checkpoint_every=100"))
    train(tiny_config(tmp_path, *args))  # resume=auto at step 5
    full = load_checkpoint(list_checkpoints(runs / "on" / "checkpoints")[-1])
    part = load_checkpoint(list_checkpoints(tmp_path / "checkpoints")[-1])
    assert_same_tensors(full["model"], part["model"], "model")
    assert_same_tensors(full["monitor"]["head"], part["monitor"]["head"], "online classifier")
    rows_full = {r["step"]: r for r in read_metrics(runs / "on")}
    rows_part = {r["step"]: r for r in read_metrics(tmp_path)}
    assert rows_full[6]["knn_online"] == rows_part[6]["knn_online"]  # after the resume: the same kNN
    for key in ("loss", "online_linear_acc", "online_linear_loss", "effective_rank"):  # same window (steps 7-8)
        assert rows_full[8][key] == rows_part[8][key], key
