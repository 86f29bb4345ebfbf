"""Where the trainer's rows go: ``metrics.jsonl`` always, TensorBoard when it is installed.

One JSON object per logged step (``step``, ``epoch``, ``loss``, ``lr``, ``images_per_s``,
``time_s``, the method's own logs, ...). TensorBoard (``pip install 'selfsup[tensorboard]'``)
gets the same rows as scalars ``train/<key>`` in ``<run>/tensorboard``. On resume, rows after
the checkpoint's step (written by the run that was killed) are dropped, so the file holds every
logged step once and in order, exactly as an uninterrupted run would have written it.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from selfsup.core.files import atomic_write, reading, writing

METRICS_FILE = "metrics.jsonl"


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


class MetricsLog:
    """Appends rows to ``metrics.jsonl`` (and TensorBoard); only the main process writes.

    Args:
        run_dir: the run directory.
        start_step: the step training (re)starts from; later rows of an earlier attempt are dropped.
        tensorboard: also write TensorBoard scalars, if ``torch.utils.tensorboard`` can be imported.
        enabled: False on all processes but the main one.
    """

    def __init__(self, run_dir: str | Path, *, start_step: int, tensorboard: bool = True, enabled: bool = True):
        self.run_dir, self.enabled, self.writer = Path(run_dir), enabled, None
        if not enabled:
            return
        trim_metrics(self.run_dir, start_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is an optional extra
                return
            # purge_step hides the killed attempt's events after the checkpoint's step
            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=start_step or None,
                                        flush_secs=30)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with writing(self.run_dir / METRICS_FILE), open(self.run_dir / METRICS_FILE, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"train/{key}", value, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


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
