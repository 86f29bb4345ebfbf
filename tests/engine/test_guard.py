"""Non-finite losses and gradients (selfsup.engine.guard): stop naming the step with the last good
checkpoint intact, or skip the whole step and count it."""
import hashlib

import pytest
import torch

from selfsup.cli import main
from selfsup.config import load_config
from selfsup.engine.checkpoint import list_checkpoints, load_checkpoint
from selfsup.engine.guard import NonFiniteGuard
from selfsup.runs.train import train
from support import TINY, assert_same_tensors, final_state, read_metrics


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
