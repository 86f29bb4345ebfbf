"""The trainer (selfsup.engine.trainer): step-indexed sampling, resume, refusing another model's checkpoint,
SIGTERM; and on 2 processes (the ``two_and_one`` group, support/training_group.py) every method's steps
equal one process's on the global batch."""
import math

import pytest
import torch

from selfsup.core.errors import CheckpointError
from selfsup.engine.checkpoint import list_checkpoints, load_checkpoint
from selfsup.engine.trainer import EpochSampler
from selfsup.methods import METHODS
from selfsup.runs.train import train
from support import TINY, read_metrics, tiny_config
from support.training_group import CASES, GLOBAL_BATCH, REL, STEPS, rel, worst


def test_sampler_is_a_stateless_permutation_split_across_processes():
    sampler = EpochSampler(num_samples=40, global_batch=8, seed=3)
    epoch = torch.cat([sampler.indices(step, 0, 1) for step in range(5)])
    assert sorted(epoch.tolist()) == list(range(40))
    halves = torch.cat([sampler.indices(7, 0, 2), sampler.indices(7, 1, 2)])
    assert torch.equal(halves, EpochSampler(40, 8, 3).indices(7, 0, 1))
    assert not torch.equal(sampler.indices(0, 0, 1), sampler.indices(5, 0, 1))  # epoch 1 reshuffles


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    full_dir, part_dir = tmp_path / "full", tmp_path / "part"
    train(tiny_config(full_dir, "resume=never"))
    train(tiny_config(part_dir, "trainer.max_steps=3", "trainer.checkpoint_every=100"))
    assert [int(p.stem[5:]) for p in list_checkpoints(part_dir / "checkpoints")] == [3]
    train(tiny_config(part_dir))  # resume=auto continues at step 3
    full, part = read_metrics(full_dir), read_metrics(part_dir)
    assert [r["step"] for r in part] == list(range(1, 9)) == [r["step"] for r in full]
    for a, b in zip(full, part):  # same lr at every step, same losses
        assert a["lr"] == b["lr"] and a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7)
    final_full = load_checkpoint(list_checkpoints(full_dir / "checkpoints")[-1])["model"]
    final_part = load_checkpoint(list_checkpoints(part_dir / "checkpoints")[-1])["model"]
    for key in final_full:
        assert torch.equal(final_full[key], final_part[key]), key


def test_checkpoint_from_another_method_config_is_refused(tmp_path):
    train(tiny_config(tmp_path, "trainer.max_steps=1"))
    with pytest.raises(CheckpointError, match="small_stem"):
        train(tiny_config(tmp_path, "backbone.small_stem=false"))


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_exits_143(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    args = [sys.executable, "-m", "selfsup", "train", "simclr-digits", *TINY, "trainer.epochs=500",
            "trainer.checkpoint_every=100000", f"run.dir={tmp_path}"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM" in err and "rerun the same command to resume" in err
    saved = list_checkpoints(tmp_path / "checkpoints")
    assert len(saved) == 1 and load_checkpoint(saved[0])["step"] == read_metrics(tmp_path)[-1]["step"]


def test_a_signal_that_lands_while_a_step_logs_still_leaves_a_checkpoint(tmp_path, monkeypatch):
    """The signal flag is read once per step: a SIGTERM arriving while a step writes its metrics row (after the
    checkpoint decision) stops the run one step later, with that step's checkpoint, never without one."""
    import signal

    from selfsup.core.errors import TrainingInterrupted
    from selfsup.engine.trainer import Trainer

    original = Trainer._log_row

    def log_then_signal(self, *args, **kwargs):
        row = original(self, *args, **kwargs)
        if self._stop_signal is None and self.step == 3:
            self._on_signal(signal.SIGTERM, None)  # what the handler does when the signal lands here
        return row

    monkeypatch.setattr(Trainer, "_log_row", log_then_signal)
    with pytest.raises(TrainingInterrupted, match="at step 4; checkpoint saved"):
        train(tiny_config(tmp_path, "trainer.epochs=50", "trainer.checkpoint_every=100000", "run.plots=false"))
    saved = list_checkpoints(tmp_path / "checkpoints")
    assert [load_checkpoint(p)["step"] for p in saved] == [4] == [read_metrics(tmp_path)[-1]["step"]]


# ----------------------------------------------------------------------------- 2 processes


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("case", [c[0] for c in CASES if c[3]])
def test_two_processes_equal_one_process_on_the_global_batch(two_and_one, case):
    r0, r1, single = (x[case] for x in two_and_one[:3])
    for step in range(STEPS):
        assert math.isclose(r0["loss"][step], single["loss"][step], rel_tol=REL), (step, r0["loss"], single["loss"])
        assert r0["loss"][step] == r1["loss"][step]
    err, key = worst(r0["update"], single["update"])
    assert err <= 1, f"first-step update of {key} differs by {err * REL:.2e} (relative)"
    assert any(u.abs().max() > 0 for u in single["update"].values())
    for step in range(STEPS):
        err, key = worst(r0["state"][step], single["state"][step])
        assert err <= 1, f"after step {step + 1}, {key} differs by {err * REL:.2e} (relative)"
        for key, value in r0["state"][step].items():  # both ranks hold the same model, queue, centre
            assert torch.equal(value, r1["state"][step][key]), (step, key)


@pytest.mark.slow
@pytest.mark.distributed
def test_the_comparison_detects_per_process_batch_norm(two_and_one):
    r0, _, single = (x["simclr-no-sync-bn"] for x in two_and_one[:3])
    assert not math.isclose(r0["loss"][0], single["loss"][0], rel_tol=1e-3)
    assert worst(r0["update"], single["update"])[0] > 100  # relative differences > 1e-3


@pytest.mark.slow
@pytest.mark.distributed
def test_moco_queue_and_dino_centre_move_and_agree(two_and_one):
    r0, r1, single, _ = two_and_one
    queue = [s["queue"] for s in single["moco"]["state"]]
    queue_size = METHODS.get("moco").tiny["queue_size"]  # the queue of the run
    assert queue_size < STEPS * GLOBAL_BATCH  # so it wrapped around
    assert int(single["moco"]["state"][-1]["queue_ptr"]) == (STEPS * GLOBAL_BATCH) % queue_size
    assert not torch.equal(queue[0], queue[1])
    centre = [s["center"] for s in single["dino"]["state"]]
    assert centre[0].abs().sum() > 0 and not torch.equal(centre[0], centre[2])
    for step in range(STEPS):
        for rank_result in (r0, r1):
            assert rel(rank_result["moco"]["state"][step]["queue"], queue[step]) <= 1
            assert rel(rank_result["dino"]["state"][step]["center"], centre[step]) <= 1
