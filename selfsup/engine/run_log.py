"""Where the trainer's rows go: ``metrics.jsonl`` always (the source of truth), and the experiment
trackers of ``run.log_with`` through Accelerate's tracker integration (TensorBoard, W&B, MLflow, ...).

One JSON object per logged step (``step``, ``epoch``, ``loss``, ``lr``, ``images_per_s``,
``time_s``, the method's own logs, ...). The trackers get the same rows' numbers as ``train/<key>``
at that step, and the run's config (flattened to dotted keys) when they start. On resume, rows after
the checkpoint's step (written by the run that was killed) are dropped, so the file holds every
logged step once and in order, exactly as an uninterrupted run would have written it; TensorBoard
hides the killed attempt's later events the same way (``purge_step``). W&B and MLflow start a new
tracker run for each attempt (named after the run directory).

:func:`accelerator_trackers` gives ``Accelerator(log_with=...)`` its trackers (the Accelerator is built
by :func:`selfsup.engine.build.make_accelerator`); :class:`MetricsLog` calls ``init_trackers`` and
``log`` and finishes the trackers at the end.
"""
from __future__ import annotations

import importlib
import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.tracking import TensorBoardTracker, get_available_trackers
from accelerate.utils import LoggerType

from selfsup.config import RunConfig
from selfsup.config.checks import log_with_names
from selfsup.core.errors import ConfigError
from selfsup.core.files import atomic_write, reading, writing

METRICS_FILE = "metrics.jsonl"
# tracker -> the selfsup extra that installs its package (the others: pip install the tracker's own package)
TRACKER_EXTRAS = {"tensorboard": "tensorboard", "mlflow": "trackers", "wandb": "trackers"}


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``run_dir/metrics.jsonl``; a torn last line (a kill mid-write) is ignored."""
    path = Path(run_dir) / METRICS_FILE
    rows = []
    if path.is_file():
        with reading(path):
            text = path.read_text()
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "step" in row:
                rows.append(row)
    return rows


def trim_metrics(run_dir: str | Path, step: int) -> None:
    """Keep only the rows up to ``step`` (atomically: temporary file + rename)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    text, rows = path.read_text(), read_metrics(run_dir)
    kept = [row for row in rows if row["step"] <= step]
    if len(kept) == len(rows) == len(text.splitlines()):  # nothing to drop, no torn line
        return
    atomic_write(path, lambda tmp: tmp.write_text("".join(json.dumps(row) + "\n" for row in kept)))


def tracker_names(run: RunConfig) -> list[str]:
    """``run.log_with`` resolved: ``auto`` is ``["tensorboard"]`` when ``run.tensorboard`` is true and
    TensorBoard is installed, else ``[]``; a named tracker whose package is missing is a one-line
    ConfigError naming the pip extra."""
    names = log_with_names(run.log_with)
    if names == ["auto"]:
        names = ["tensorboard"] if run.tensorboard and _installed("tensorboard") else []
        if names and not _trackers_start_late():
            warnings.warn("TensorBoard logging needs accelerate >= 1.8 (pip install -U accelerate); "
                          "metrics.jsonl only", stacklevel=2)
            return []
        return names
    for name in names:
        if not _installed(name):
            extra = TRACKER_EXTRAS.get(name)
            how = f"pip install 'selfsup[{extra}]'" if extra else f"pip install {name}"
            raise ConfigError(f"run.log_with={name} needs the {name} package, which is not installed: {how}")
    if "tensorboard" in names and not _trackers_start_late():
        raise ConfigError("run.log_with=tensorboard needs accelerate >= 1.8 (trackers started by init_trackers): "
                          "pip install -U accelerate")
    return names


def accelerator_trackers(run: RunConfig, run_dir: str | Path) -> list:
    """``Accelerator(log_with=...)`` for ``run.log_with``: the trackers' names, TensorBoard as a
    :class:`RunTensorBoard` (its events in ``<run>/tensorboard``)."""
    return [RunTensorBoard(run_dir) if name == "tensorboard" else name for name in tracker_names(run)]


class RunTensorBoard(TensorBoardTracker):
    """Accelerate's TensorBoard tracker writing into ``<run_dir>/tensorboard`` whatever the project is
    called (Accelerate's own writes into ``<project_dir>/<project>``, and the project names the W&B
    project / MLflow experiment too), with events flushed every 30 s."""

    def __init__(self, run_dir: str | Path):
        super().__init__("tensorboard", str(run_dir), flush_secs=30)

    def purge_after(self, step: int) -> None:
        """Hide the events an earlier attempt wrote after ``step`` (set before the tracker starts): the
        rows of steps ``step + 1, ...`` come again; ``step``'s own row (written before its checkpoint) stays."""
        self.init_kwargs["purge_step"] = step + 1 if step else None


def flat_config(config: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys with scalar values (what trackers store): lists and mappings
    become their JSON text, ``None`` stays ``None``."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = json.dumps(value) if isinstance(value, (list, tuple, dict)) else value
    return out


class MetricsLog:
    """Appends rows to ``metrics.jsonl`` and logs them to ``accelerator``'s trackers; only the main process writes.

    Args:
        run_dir: the run directory.
        start_step: the step training (re)starts from; later rows of an earlier attempt are dropped.
        accelerator: its ``log_with`` trackers (none: ``metrics.jsonl`` only) get the rows.
        config: the run's config (nested), stored by every tracker when it starts.
        project: the trackers' project (W&B project, MLflow experiment); the tracker run is named after run_dir.
        enabled: False on all processes but the main one.
    """

    def __init__(self, run_dir: str | Path, *, start_step: int, accelerator: Accelerator | None = None,
                 config: dict | None = None, project: str = "selfsup", enabled: bool = True):
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.accelerator = accelerator if enabled and accelerator is not None and accelerator.log_with else None
        if not enabled:
            return
        trim_metrics(self.run_dir, start_step)
        if self.accelerator is not None:
            for tracker in self.accelerator.log_with:
                if isinstance(tracker, RunTensorBoard):
                    tracker.purge_after(start_step)
            name = self.run_dir.resolve().name
            self.accelerator.init_trackers(project, config=flat_config(config or {}), init_kwargs={
                "wandb": {"name": name, "dir": str(self.run_dir)}, "mlflow": {"run_name": name}})

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with writing(self.run_dir / METRICS_FILE), open(self.run_dir / METRICS_FILE, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.accelerator is not None:
            self.accelerator.log({f"train/{key}": value for key, value in row.items()
                                  if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)},
                                 step=row["step"])

    def close(self) -> None:
        """Finish the trackers (not ``accelerator.end_training()``: it also ends the process group, which
        the evaluation after training still uses)."""
        if self.accelerator is not None:
            for tracker in self.accelerator.trackers:
                tracker.finish()
            self.accelerator.trackers.clear()  # a later fit() starts them anew
            self.accelerator = None


def _installed(name: str) -> bool:
    """Whether Accelerate finds the tracker's package (TensorBoard: and its writer imports, as the tracker imports it)."""
    if LoggerType(name) not in get_available_trackers():
        return False
    if name != "tensorboard":
        return True
    for module in ("torch.utils.tensorboard", "tensorboardX"):
        try:
            importlib.import_module(module)
            return True
        except ImportError:
            continue
    return False


def _trackers_start_late() -> bool:
    """Accelerate >= 1.8 opens a tracker in ``start()`` (called by ``init_trackers``), not when it is built."""
    return hasattr(TensorBoardTracker, "start")


class Window:
    """Sums of a step's outputs since the last row, on the device (adding never syncs).

    Steps that returned no outputs (skipped by ``trainer.nonfinite=skip``) count for the
    throughput but not for the means.
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = self.counted = 0
        self.start = time.perf_counter()

    def add(self, outputs: dict[str, torch.Tensor]) -> None:
        self.steps += 1
        if outputs:
            self.counted += 1
            for key, value in outputs.items():
                self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()

    def flush(self) -> tuple[dict[str, float | None], int, float]:
        """``(means, steps, seconds)`` of the window (a host sync), then start a new window."""
        means: dict[str, float | None] = {k: float(v) / self.counted for k, v in self.sums.items()}
        means.setdefault("loss", None)  # every step of the window was skipped
        result = (means, self.steps, time.perf_counter() - self.start)
        self.__init__()
        return result
