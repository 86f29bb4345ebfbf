"""The shared transfer loop: a run killed after a checkpoint and rerun ends bit-identical to an uninterrupted one;
a finished run is refused (run.overwrite=true starts it over), a checkpoint with other settings too."""
from __future__ import annotations

import json

import pytest
import torch

import selfsup.transfer.loop as loop
from selfsup.cli import main
from selfsup.core.errors import CheckpointError, ConfigError
from selfsup.engine.checkpoint import latest_checkpoint
from selfsup.transfer.segmentation import run_segmentation

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS, KILL_AT = 4, 2


class Killed(Exception):
    """Stands for the process dying right after a checkpoint was written."""


def _args(scenes, out, *extra):
    # the FCN head has dropout (global RNG) and last_k trains layer4 (encoder optimizer state): all must resume
    return [f"data.root={scenes}", "model.head=fcn", "model.regime=last_k", f"train.steps={STEPS}",
            "train.batch_size=2", f"train.checkpoint_every={KILL_AT}", f"run.dir={out}", *extra]


def _final(out) -> tuple[dict, dict]:
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("seconds", "resumed_from"):
        metrics.pop(key)
    path, state = latest_checkpoint(out / "checkpoints")
    assert path.name == f"step-{STEPS:08d}.pt"
    return metrics, state["model"]


def test_killed_then_rerun_ends_bit_identical_to_an_uninterrupted_run(resnet_export, scenes, tmp_path, monkeypatch):
    whole = run_segmentation(resnet_export, _args(scenes, tmp_path / "whole"))
    assert whole["resumed_from"] is None

    real = loop.save_checkpoint

    def save_then_die(directory, step, state, keep):
        real(directory, step, state, keep)
        if step == KILL_AT:
            raise Killed

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        run_segmentation(resnet_export, _args(scenes, tmp_path / "cut"))
    monkeypatch.undo()
    assert not (tmp_path / "cut" / "metrics.json").exists()
    with pytest.raises(CheckpointError, match=r"other settings: train\.lr=0\.001 -> 0\.002;"):
        run_segmentation(resnet_export, _args(scenes, tmp_path / "cut", "train.lr=0.002"))
    resumed = run_segmentation(resnet_export, _args(scenes, tmp_path / "cut", "train.device=cpu"))
    assert resumed["resumed_from"] == KILL_AT

    (m_whole, w_whole), (m_cut, w_cut) = _final(tmp_path / "whole"), _final(tmp_path / "cut")
    m_cut["out"] = m_whole["out"] = None
    assert m_cut == m_whole
    assert w_cut.keys() == w_whole.keys() and any(k.startswith("head.") for k in w_cut)
    assert [k for k in w_cut if not torch.equal(w_cut[k], w_whole[k])] == []


def test_a_finished_run_is_refused_unless_overwrite(resnet_export, scenes, tmp_path, capsys):
    out = tmp_path / "lin"
    args = [f"data.root={scenes}", "train.steps=1", "train.batch_size=2", f"run.dir={out}"]
    first = run_segmentation(resnet_export, args)
    capsys.readouterr()  # the first run's progress line
    code = main(["transfer", "segmentation", str(resnet_export), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "training already finished at step 1" in err and "run.overwrite=true" in err
    with pytest.raises(ConfigError, match="training already finished"):
        run_segmentation(resnet_export, args)
    again = run_segmentation(resnet_export, [*args, "run.overwrite=true"])
    assert again["resumed_from"] is None and again["mIoU"] == first["mIoU"]
