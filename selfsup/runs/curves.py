"""PNG plots of a run, from its ``metrics.jsonl``: :func:`plot_run` or ``selfsup plot RUN``.

Needs matplotlib (``pip install 'selfsup[plots]'``); ``selfsup train`` calls it at the end when
matplotlib is installed (``run.plots=false`` turns that off). Written to ``<run>/plots/``:

- ``loss_lr.png``: the training loss and the learning rate over steps (epochs on the top axis);
- ``knn.png``: online kNN top-1 over epochs, when rows hold ``knn*`` values;
- ``teacher_entropy.png``: DINO's teacher entropy (and KL) over steps, when rows hold them;
- ``monitor.png``: the online monitor's linear classifier accuracy and collapse indicators
  (``embedding_std``, ``effective_rank``; :mod:`selfsup.engine.monitor`), when rows hold them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from selfsup.core.errors import SelfsupError
from selfsup.core.files import writing
from selfsup.engine.run_log import read_metrics


def plots_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write the run's plots (see the module docstring); returns the PNG paths."""
    if not plots_available():
        raise SelfsupError("plots need matplotlib: pip install 'selfsup[plots]'")
    run_dir = Path(run_dir)
    rows = _last_per_step(read_metrics(run_dir))
    if not rows:
        raise SelfsupError(f"{run_dir} has no metrics.jsonl rows to plot")
    out = run_dir / "plots"
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    per_epoch = rows[-1]["step"] / rows[-1]["epoch"] if rows[-1].get("epoch") else None
    written = [_figure(out / "loss_lr.png", rows, [["loss"], ["lr"]], ["loss", "learning rate"], per_epoch,
                       "training loss and learning rate")]
    knn = sorted({k for row in rows for k, v in row.items() if k.startswith("knn") and _number(v)})
    if knn:
        written.append(_figure(out / "knn.png", rows, [knn], ["top-1"], per_epoch, "online kNN", x="epoch"))
    if any(_number(row.get("teacher_entropy")) for row in rows):
        keys = [[k] for k in ("teacher_entropy", "kl") if any(_number(row.get(k)) for row in rows)]
        written.append(_figure(out / "teacher_entropy.png", rows, keys, [k[0].replace("_", " ") for k in keys],
                               per_epoch, "DINO teacher entropy"))
    panels = [[k] for k in MONITOR_PANELS if any(_number(row.get(k)) for row in rows)]
    if panels:
        written.append(_figure(out / "monitor.png", rows, panels, [k[0].replace("_", " ") for k in panels],
                               per_epoch, "online monitor: linear classifier and collapse indicators"))
    return written


MONITOR_PANELS = ("online_linear_acc", "embedding_std", "effective_rank")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _last_per_step(rows: list[dict]) -> list[dict]:
    """One row per step (the last written), in step order."""
    return sorted({row["step"]: row for row in rows}.values(), key=lambda row: row["step"])


def _figure(path: Path, rows: list[dict], panels: list[list[str]], ylabels: list[str], per_epoch: float | None,
            title: str, x: str = "step") -> Path:
    """One PNG with a panel per key group, sharing the x axis."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(7, 2.6 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, keys, ylabel in zip(axes, panels, ylabels):
        for key in keys:
            points = [(row[x], row[key]) for row in rows if _number(row.get(key)) and _number(row.get(x))]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, label=key, marker="o" if len(points) < 30 else None, markersize=3)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize="small")
    axes[-1].set_xlabel(x)
    if x == "step" and per_epoch:
        top = axes[0].secondary_xaxis("top", functions=(lambda s: s / per_epoch, lambda e: e * per_epoch))
        top.set_xlabel("epoch")
    fig.suptitle(title)
    with writing(path):
        fig.savefig(path, dpi=100)
    return path
