"""Checkpoints (selfsup.engine.checkpoint): SIGKILL and resume, corrupt / half-written / foreign /
malicious checkpoints. Non-finite losses: tests/engine/test_guard.py."""
import os
import pickle
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from selfsup.cli import main
from selfsup.core.errors import CheckpointError
from selfsup.engine.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
)
from selfsup.runs.train import train
from support import TINY, assert_same_tensors, final_state, read_metrics, tiny_config


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """TINY trained start to finish (8 steps, 2 epochs of 4) in one go."""
    run = tmp_path_factory.mktemp("uninterrupted")
    train(tiny_config(run, "resume=never"))
    return final_state(run), read_metrics(run)


@pytest.mark.slow
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
