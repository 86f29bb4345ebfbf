"""The end of a run (selfsup.runs.summary): one tiny run's progress lines, metrics.jsonl rows, TensorBoard
scalars, plots and summary; and the core without the optional extras. Progress: tests/core/test_progress.py;
metrics.jsonl: tests/engine/test_run_log.py; curves: tests/runs/test_curves.py."""
import json
import re
import sys

import pytest

from selfsup.cli import main
from selfsup.engine.run_log import read_metrics
from selfsup.runs.curves import plots_available
from selfsup.runs.train import train
from support import tiny_config

try:
    import tensorboard  # noqa: F401
    HAVE_TENSORBOARD = True
except ImportError:
    HAVE_TENSORBOARD = False


def test_training_run_outputs(tmp_path, capsys, monkeypatch):
    """One tiny run: plain progress lines, metrics rows, TensorBoard scalars, plots, summary."""
    monkeypatch.setenv("SELFSUP_PROGRESS_SECONDS", "0")
    train(tiny_config(tmp_path, "trainer.max_steps=4"))
    out, err = capsys.readouterr()
    progress = [line for line in err.splitlines() if line.startswith("train: ")]
    assert "\r" not in err and progress[-1].startswith("train: 4/4 step (100%) | loss=") and "img_s=" in progress[-1]
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all({"loss", "lr", "images_per_s", "time_s", "epoch"} <= set(r) for r in rows)

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["total_steps"] == 8 and summary["final_loss"] == rows[-1]["loss"]
    assert summary["images_per_s"] > 0 and summary["encoder"] == str(tmp_path / "encoder")
    table = out[out.index("summary\n"):]
    for pattern in ("throughput +[0-9]+ images/s", f"loss +{rows[-1]['loss']:.4f} final",
                    f"encoder +{re.escape(str(tmp_path / 'encoder'))}"):
        assert re.search(pattern, table), table

    if HAVE_TENSORBOARD:
        from tensorboard.backend.event_processing.event_accumulator import (
            EventAccumulator,
        )

        events = EventAccumulator(str(tmp_path / "tensorboard"))
        events.Reload()
        losses = [(e.step, e.value) for e in events.Scalars("train/loss")]
        assert losses == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in rows]
    if plots_available():
        assert summary["plots"][0] == str(tmp_path / "plots" / "loss_lr.png")  # then the online monitor's, if any
        assert (tmp_path / "plots" / "loss_lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_the_optional_extras_the_core_still_works(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    train(tiny_config(tmp_path, "trainer.max_steps=1"))
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]
    assert not (tmp_path / "tensorboard").exists() and not (tmp_path / "plots").exists()
    assert re.search(r"plots +none \(pip install 'selfsup\[plots\]'\)", capsys.readouterr().out)
    assert main(["plot", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "selfsup: error: plots need matplotlib: pip install 'selfsup[plots]'"


def test_compare_with_random_picks_the_stronger_init_per_protocol():
    from selfsup.runs.summary import compare_with_random, format_summary

    pretrained = {"knn_k20": {"top1": 0.95}, "linear": {"top1": 0.96}, "classifier": {"top1": 0.99}}
    baselines = {"timm_init": {"knn_k20": {"top1": 0.77}, "linear": {"top1": 0.97}},
                 "torch_default_init": {"knn_k20": {"top1": 0.91}, "linear": {"top1": 0.90}}}
    vs = compare_with_random(pretrained, baselines)
    assert set(vs) == {"knn_k20", "linear"}  # no baseline reports the supervised head
    assert vs["knn_k20"]["stronger_init"] == "torch_default_init" and vs["knn_k20"]["beats"]
    assert vs["knn_k20"]["random"] == 0.91 and vs["knn_k20"]["margin"] == pytest.approx(0.04)
    assert vs["linear"]["stronger_init"] == "timm_init" and not vs["linear"]["beats"]
    table = format_summary({"run_dir": "r", "method": "simclr", "backbone": "resnet18", "steps": 1, "total_steps": 1,
                            "epochs": None, "train_time_s": None, "images_per_s": None, "final_loss": None,
                            "skipped_steps": 0, "eval": {k: v["top1"] for k, v in pretrained.items()},
                            "vs_random": vs, "encoder": "e", "checkpoint": None, "plots": []})
    assert re.search(r"knn_k20 top-1 +95\.00%  vs 91\.00% random init \(PyTorch's reset_parameters\(\)", table), table
    assert re.search(r"linear top-1 +96\.00%  vs 97\.00% random init \(timm's own, as configured\).*-1\.00 points \(does NOT beat", table)
