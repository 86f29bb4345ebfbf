"""The run log (selfsup.engine.run_log): metrics.jsonl read back, trimmed to a checkpoint's step.
TensorBoard scalars of a real run: tests/runs/test_summary.py::test_training_run_outputs."""
import json

from selfsup.engine.run_log import read_metrics, trim_metrics


def test_trim_metrics_drops_rows_after_the_checkpoint_and_a_torn_line(tmp_path):
    rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 6)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6, "lo')
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5]
    trim_metrics(tmp_path, 3)
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(json.dumps(r) + "\n" for r in rows[:3])
