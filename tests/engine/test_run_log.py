"""The run log (selfsup.engine.run_log): metrics.jsonl read back, trimmed to a checkpoint's step; the
experiment trackers of run.log_with (TensorBoard, an MLflow file store, W&B offline) read back offline.
TensorBoard scalars of a default run: tests/runs/test_summary.py::test_training_run_outputs."""
import glob
import json
import struct

import pytest
import yaml

from selfsup.cli import main
from selfsup.config import load_config
from selfsup.core.errors import ConfigError
from selfsup.engine.run_log import flat_config, read_metrics, tracker_names, trim_metrics
from selfsup.runs.train import train
from support import tiny_config


def test_trim_metrics_drops_rows_after_the_checkpoint_and_a_torn_line(tmp_path):
    rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 6)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6, "lo')
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5]
    trim_metrics(tmp_path, 3)
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(json.dumps(r) + "\n" for r in rows[:3])


# ----------------------------------------------------------------------------- trackers (run.log_with)
# Each tracker gets the run's config (config.yaml flattened to dotted keys) and every number of every
# metrics.jsonl row as train/<key> at the row's step; read back offline with the tracker's own reader.

QUIET = ["run.plots=false", "eval.online=false"]


def _numbers(rows):
    """{train/<key>: [(step, value), ...]} of the numbers in metrics.jsonl's rows (what a tracker gets)."""
    out = {}
    for row in rows:
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                out.setdefault(f"train/{key}", []).append((row["step"], value))
    return out


def _config(run):
    return flat_config(yaml.safe_load((run / "config.yaml").read_text()))


def _approx(series):
    return {key: [(step, pytest.approx(value, rel=1e-6)) for step, value in values] for key, values in series.items()}


def test_tensorboard_gets_the_config_and_the_rows_and_a_resume_hides_the_killed_attempts_events(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(tiny_config(run, "run.log_with=tensorboard", "trainer.max_steps=4", "trainer.checkpoint_every=2", *QUIET))
    # a new attempt from step 2's checkpoint writes steps 3 and 4 again: metrics.jsonl and TensorBoard hold them once
    train(tiny_config(run, "run.log_with=tensorboard", "trainer.max_steps=4", "trainer.checkpoint_every=2", *QUIET,
                      f"resume={run / 'checkpoints' / 'step-00000002.pt'}"))
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    got = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert got == _approx(_numbers(rows))
    stored = [yaml.safe_load(p.read_text()) for p in sorted((run / "tensorboard").glob("*/hparams.yml"))]
    assert len(stored) == 2 and stored[-1] == _config(run)  # one per attempt, Accelerate's hparams file


def test_mlflow_file_store_gets_the_config_and_the_rows(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{tmp_path / 'mlruns'}")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 prefers a database; a folder suits a test
    run = tmp_path / "run"
    train(tiny_config(run, "run.log_with=mlflow", "run.project=selfsup-test", "trainer.max_steps=2", *QUIET))
    client = MlflowClient()
    (found,) = client.search_runs([client.get_experiment_by_name("selfsup-test").experiment_id])
    assert found.info.run_name == "run" and found.info.status == "FINISHED"
    assert found.data.params == {key: str(value) for key, value in _config(run).items()}
    rows = read_metrics(run)
    history = {key: [(m.step, m.value) for m in client.get_metric_history(found.info.run_id, key)]
               for key in found.data.metrics}
    assert history == _approx(_numbers(rows)) and not (run / "tensorboard").exists()


def _wandb_records(path):
    """The records of a W&B offline run file: LevelDB's log format (32 KiB blocks of chunks, each with a
    7-byte header: crc32, length, type full/first/middle/last) after W&B's 7-byte file header."""
    from wandb.proto import wandb_internal_pb2

    raw, pos, pending = open(path, "rb").read(), 7, b""
    while pos + 7 <= len(raw):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        pending, pos = pending + raw[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4) and pending:  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_wandb_offline_run_gets_the_config_and_the_rows(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")  # leave stdout / stderr to pytest
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # nothing written under ~
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    run = tmp_path / "run"
    train(tiny_config(run, "run.log_with=wandb", "trainer.max_steps=2", *QUIET))
    (path,) = glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb"))
    config, history, project = {}, {}, None
    for record in _wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            project, name = record.run.project, record.run.display_name
        if kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        if kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            for key, value in items.items():
                if key.startswith("train/"):
                    history.setdefault(key, []).append((items["_step"], value))
    assert project == "selfsup" and name == "run"
    assert {k: v for k, v in config.items() if k != "_wandb"} == _config(run)
    assert history == _approx(_numbers(read_metrics(run)))


def test_log_with_names_and_auto():
    from selfsup.config.checks import log_with_names

    assert log_with_names("tensorboard, MLflow") == ["tensorboard", "mlflow"] == log_with_names(["tensorboard", "mlflow"])
    assert log_with_names("none") == [] == log_with_names([]) and log_with_names("auto") == ["auto"]
    run = load_config("simclr-digits", ["run.tensorboard=false"]).run
    assert tracker_names(run) == []  # auto follows run.tensorboard, as before log_with existed
    assert tracker_names(load_config("simclr-digits").run) == ["tensorboard"]


@pytest.mark.parametrize("value, message", [
    ("tensorbord", r"^run.log_with: unknown tracker 'tensorbord' \(did you mean 'tensorboard'\?\); trackers: "),
    ("auto,mlflow", r"^run.log_with=auto,mlflow: auto and none stand alone"),
])
def test_an_unknown_tracker_is_one_line(value, message):
    with pytest.raises(ConfigError, match=message):
        load_config("simclr-digits", [f"run.log_with={value}"])


def test_a_missing_tracker_package_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("selfsup.engine.run_log.get_available_trackers", lambda: [])
    argv = ["train", "simclr-digits", f"run.dir={tmp_path / 'run'}", "eval.at_end=false"]
    assert main([*argv, "run.log_with=tensorboard,mlflow"]) == 2
    assert capsys.readouterr().err == ("selfsup: error: run.log_with=tensorboard needs the tensorboard package, "
                                       "which is not installed: pip install 'selfsup[tensorboard]'\n")
    assert main([*argv, "run.log_with=mlflow"]) == 2
    assert capsys.readouterr().err.endswith("needs the mlflow package, which is not installed: pip install 'selfsup[trackers]'\n")
    assert main([*argv, "run.log_with=comet_ml"]) == 2
    assert capsys.readouterr().err.endswith("pip install comet_ml\n")
    assert not (tmp_path / "run").exists()
