"""The run experience: progress lines off a terminal, metrics.jsonl / TensorBoard, summary, plots."""
import io
import json
import re
import sys

import pytest
from test_trainer import tiny_config

from selfsup.cli import main
from selfsup.core.progress import PlainProgress, progress_bar
from selfsup.engine.run_log import read_metrics, trim_metrics
from selfsup.runs.curves import plots_available
from selfsup.runs.train import train

try:
    import tensorboard  # noqa: F401
    HAVE_TENSORBOARD = True
except ImportError:
    HAVE_TENSORBOARD = False


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_tqdm_on_a_terminal_and_plain_lines_elsewhere():
    from tqdm.auto import tqdm

    with progress_bar(total=3, file=FakeTerminal()) as bar:
        assert isinstance(bar, tqdm)
    log = io.StringIO()
    bar = progress_bar(total=4, desc="train", unit="step", file=log)
    assert isinstance(bar, PlainProgress)
    bar.interval = 0.0  # every update prints
    bar.update(1)
    bar.set_postfix(loss="1.2345")
    bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 2
    assert lines[0].startswith("train: 1/4 step (25%) | ") and "ETA" in lines[0]
    assert lines[1].startswith("train: 2/4 step (50%) | loss=1.2345 | ")
    quiet = io.StringIO()
    for _ in PlainProgress(range(100), desc="features", interval=3600, file=quiet):
        pass
    assert quiet.getvalue().splitlines() == [quiet.getvalue().splitlines()[0]]  # just the final line
    assert quiet.getvalue().startswith("features: 100/100 it (100%)")


def test_trim_metrics_drops_rows_after_the_checkpoint_and_a_torn_line(tmp_path):
    rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 6)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6, "lo')
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5]
    trim_metrics(tmp_path, 3)
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(json.dumps(r) + "\n" for r in rows[:3])


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
        assert summary["plots"] == [str(tmp_path / "plots" / "loss_lr.png")]
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


def test_plot_cli_draws_knn_and_dino_entropy_when_the_metrics_have_them(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rows = [{"step": s, "epoch": s / 10, "loss": 5 - s / 10, "lr": 0.1 * min(1, s / 10), "teacher_entropy": 8 - s / 20,
             "kl": 0.1 * s, **({"knn_k20": 0.2 + s / 100} if s % 10 == 0 else {})} for s in range(1, 41)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["plot", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.split()
    names = ["loss_lr.png", "knn.png", "teacher_entropy.png"]
    assert printed == [str(tmp_path / "plots" / name) for name in names]
    for name in names:
        assert (tmp_path / "plots" / name).stat().st_size > 5000
