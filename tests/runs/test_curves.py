"""Training curves (selfsup.runs.curves): `selfsup plot RUN` draws the panels the metrics have."""
import json

import pytest

from selfsup.cli import main


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


def test_plot_draws_the_online_monitor_when_the_metrics_have_it(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rows = [{"step": s, "epoch": s / 10, "loss": 5 - s / 10, "lr": 0.1, "online_linear_acc": s / 40,
             "embedding_std": 0.08, "effective_rank": 30 + s, **({"knn_online": s / 50} if s % 10 == 0 else {})}
            for s in range(1, 41)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["plot", str(tmp_path)]) == 0
    names = ["loss_lr.png", "knn.png", "monitor.png"]
    assert capsys.readouterr().out.split() == [str(tmp_path / "plots" / name) for name in names]
    assert (tmp_path / "plots" / "monitor.png").stat().st_size > 5000
