"""Failure and recovery: SIGKILL and resume, corrupt / foreign / malicious checkpoints, NaN losses."""
import hashlib
import os
import pickle
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_trainer import TINY, read_metrics, tiny_config

from selfsup.cli import main
from selfsup.config import load_config
from selfsup.core.errors import CheckpointError
from selfsup.engine.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
)
from selfsup.engine.guard import NonFiniteGuard
from selfsup.runs.train import train


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


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """TINY trained start to finish (8 steps, 2 epochs of 4) in one go."""
    run = tmp_path_factory.mktemp("uninterrupted")
    train(tiny_config(run, "resume=never"))
    return final_state(run), read_metrics(run)


def test_sigkill_mid_epoch_then_resume_ends_bit_identical(tmp_path, uninterrupted):
    run = tmp_path / "run"
    # same intra-op thread count as this process, so the subprocess computes the very same floats
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    args = [sys.executable, "-m", "selfsup", "train", "simclr-digits", *TINY, "trainer.checkpoint_every=3",
            f"run.dir={run}"]
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, env=env)
        first = run / "checkpoints" / "step-00000003.pt"  # step 3 of 4: mid-epoch
        deadline = time.time() + 300
        while not first.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # no handler, no last checkpoint: the process just vanishes
        assert proc.wait(timeout=60) == -signal.SIGKILL, (tmp_path / "stderr.txt").read_text()[-2000:]
    steps = [int(p.stem[5:]) for p in list_checkpoints(run / "checkpoints")]
    assert steps and max(steps) < 8, f"the run finished before the kill: {steps}"

    train(tiny_config(run))  # resume=auto from the newest complete checkpoint
    state, rows = final_state(run), read_metrics(run)
    assert_same_tensors(uninterrupted[0]["model"], state["model"], "model")
    assert_same_tensors(uninterrupted[0]["optimizer"], state["optimizer"], "optimizer")
    assert [r["step"] for r in rows] == list(range(1, 9))  # rows the killed attempt wrote after its checkpoint: gone
    assert [r["loss"] for r in rows] == [r["loss"] for r in uninterrupted[1]]


def test_truncated_newest_checkpoint_is_skipped_for_the_previous_one(tmp_path, capsys):
    train(tiny_config(tmp_path, "trainer.max_steps=4", "trainer.checkpoint_every=2"))
    newest = tmp_path / "checkpoints" / "step-00000004.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    capsys.readouterr()
    with pytest.warns(UserWarning, match=r"skipping checkpoint .*step-00000004\.pt is truncated or corrupt"):
        train(tiny_config(tmp_path, "trainer.max_steps=3", "trainer.checkpoint_every=2"))
    assert "step-00000002.pt at step 2" in capsys.readouterr().out
    # the corrupt file of the abandoned attempt is gone, so a later resume=auto cannot trip on it
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-00000002.pt", "step-00000003.pt"]
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]


def test_restarting_afresh_discards_the_old_runs_checkpoints(tmp_path):
    train(tiny_config(tmp_path, "trainer.max_steps=2", "trainer.checkpoint_every=1"))
    train(tiny_config(tmp_path, "trainer.max_steps=1", "resume=never", "trainer.lr=0.1"))
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-00000001.pt"]
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]


def test_half_written_checkpoint_is_ignored_and_cleaned(tmp_path):
    state = {"step": 1, "model": {"w": torch.ones(2)}, "optimizer": {}, "rng": rng_state()}
    save_checkpoint(tmp_path, 1, state, keep=2)
    (tmp_path / ".step-00000002.pt.tmp").write_bytes(b"half a checkpoi")  # a kill during torch.save
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000001.pt"]
    assert latest_checkpoint(tmp_path)[1]["step"] == 1
    save_checkpoint(tmp_path, 3, {**state, "step": 3}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001.pt", "step-00000003.pt"]


@pytest.fixture(scope="module")
def one_step_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("one_step")
    train(tiny_config(run, "trainer.max_steps=1"))
    return run


@pytest.mark.parametrize("recipe,override,message", [
    ("byol-digits", "method.pred_hidden_dim=32", r"was written with method=simclr, this run has method=byol"),
    ("simclr-digits", "backbone.name=resnet10t", r"was written with backbone=test_resnet, this run has backbone=resnet10t"),
    ("simclr-digits", "method.proj_dim=8", r"does not fit this run's model \(head\.\S+ is \[16, 32\] in the checkpoint, \[8, 32\] here\)"),
])
def test_checkpoint_of_another_model_is_a_one_line_error(one_step_run, recipe, override, message, capsys):
    config_before = (one_step_run / "config.yaml").read_text()
    code = main(["train", recipe, *TINY, f"run.dir={one_step_run}", override])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("selfsup: error: checkpoint ") and re.search(message, err), err
    assert (one_step_run / "config.yaml").read_text() == config_before  # the run directory is untouched


class _Payload:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, one_step_run, capsys):
    marker = tmp_path / "marker"
    via_torch, via_pickle = tmp_path / "via_torch.pt", tmp_path / "via_pickle.pt"
    torch.save({"step": 1, "model": _Payload(marker)}, via_torch)
    with open(via_pickle, "wb") as handle:
        pickle.dump({"step": 1, "model": _Payload(marker)}, handle)

    for path in (via_torch, via_pickle):
        with pytest.raises(CheckpointError, match=r"refused: unpickling it could run arbitrary Python code"):
            load_checkpoint(path)
        code = main(["train", "simclr-digits", *TINY, f"run.dir={tmp_path / 'run'}", f"resume={path}"])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and "refused" in err and str(path) in err, err
    # planted as the newest checkpoint of a run: skipped with a warning, the previous one is used
    planted = one_step_run / "checkpoints" / "step-00000099.pt"
    planted.write_bytes(via_torch.read_bytes())
    try:
        with pytest.warns(UserWarning, match="step-00000099.pt refused"):
            path, state = latest_checkpoint(one_step_run / "checkpoints")
    finally:
        planted.unlink()
    assert path.name == "step-00000001.pt" and state["step"] == 1
    assert not marker.exists()

    with open(via_pickle, "rb") as handle:  # control: the payload is live when loaded unsafely
        pickle.load(handle)
    assert marker.read_text() == "pwned"


def inject_nan(monkeypatch, method_cls, at_calls, on_nan=lambda: None):
    """Make ``method_cls``'s loss NaN on the given (1-based) calls of its training_step."""
    original, calls = method_cls.training_step, [0]

    def training_step(self, views, labels, values):
        out = original(self, views, labels, values)
        calls[0] += 1
        if calls[0] in at_calls:
            on_nan()
            out = {**out, "loss": out["loss"] * float("nan")}
        return out

    monkeypatch.setattr(method_cls, "training_step", training_step)


def test_nan_loss_stops_naming_the_step_and_the_intact_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    from selfsup.methods.simclr import SimCLR

    good = tmp_path / "checkpoints" / "step-00000002.pt"
    digest = {}
    inject_nan(monkeypatch, SimCLR, {3}, on_nan=lambda: digest.setdefault("before", hashlib.sha256(good.read_bytes()).hexdigest()))
    # log_every=100: the NaN of step 3 is only looked at (a host sync) at the step-4 checkpoint
    args = ["train", "simclr-digits", *TINY, f"run.dir={tmp_path}", "trainer.max_steps=6",
            "trainer.checkpoint_every=2", "trainer.log_every=100"]
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 3 and "Traceback" not in err, err
    last = err.splitlines()[-1]  # before it: progress lines only
    assert last.startswith("selfsup: error: non-finite loss or gradient at step 3 (lr ") and f"last good checkpoint: {good}" in last
    assert all(not line.startswith("selfsup:") for line in err.splitlines()[:-1]), err
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-00000002.pt"]
    assert hashlib.sha256(good.read_bytes()).hexdigest() == digest["before"]
    state = load_checkpoint(good)
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())

    monkeypatch.undo()  # the cause is gone: rerunning resumes from the good checkpoint and finishes
    assert main(args) == 0 and final_state(tmp_path)["step"] == 6


def test_nonfinite_skip_drops_the_whole_step_and_counts_it(tmp_path, monkeypatch):
    from selfsup.methods.byol import BYOL

    inject_nan(monkeypatch, BYOL, {3})
    train(load_config("byol-digits", [*TINY, f"run.dir={tmp_path}", "method.pred_hidden_dim=32", "trainer.nonfinite=skip",
                                      "trainer.max_steps=4", "trainer.checkpoint_every=1", "trainer.keep_checkpoints=10"]))
    states = {p.name: load_checkpoint(p) for p in list_checkpoints(tmp_path / "checkpoints")}
    before, skipped, after = (states[f"step-0000000{i}.pt"] for i in (2, 3, 4))
    # no optimizer step, no EMA (target network) update, BatchNorm statistics put back
    assert_same_tensors(before["model"], skipped["model"], "model")
    assert_same_tensors(before["optimizer"]["state"], skipped["optimizer"]["state"], "optimizer")  # momenta
    target = [k for k in after["model"] if k.startswith("target_") and after["model"][k].is_floating_point()]
    assert target and any(not torch.equal(skipped["model"][k], after["model"][k]) for k in target)  # step 4: EMA ran
    rows = read_metrics(tmp_path)
    assert [r["skipped_steps"] for r in rows] == [0, 0, 1, 1] and rows[2]["loss"] is None
    assert all(isinstance(r["loss"], float) for i, r in enumerate(rows) if i != 2)
    assert skipped["skipped_steps"] == 1


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_guard_sees_a_nan_gradient_behind_a_finite_loss(mode):
    model = torch.nn.Linear(3, 2)
    model.register_buffer("stat", torch.zeros(2))
    guard = NonFiniteGuard(mode, model, torch.device("cpu"))
    guard.begin_step()
    model.stat += 1  # what a forward pass does to BatchNorm statistics
    for p in model.parameters():
        p.grad = torch.full_like(p, float("nan"))
    accepted = guard.accept(5, torch.tensor(1.0), model.parameters(), None if mode == "skip" else torch.tensor(float("nan")))
    if mode == "stop":  # decided later, at a host sync, naming the first bad step
        assert accepted and guard.first_bad_step() == 5 and model.stat.tolist() == [1, 1]
    else:
        assert not accepted and guard.skipped == 1 and model.stat.tolist() == [0, 0]
