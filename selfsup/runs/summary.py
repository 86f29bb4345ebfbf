"""The table ``selfsup train`` prints when it ends (also written as ``<run>/summary.json``).

Everything comes from what the run wrote (metrics.jsonl, checkpoints, eval results), so a run
resumed after a kill reports the whole run, not just its last attempt.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from selfsup.engine.checkpoint import list_checkpoints
from selfsup.config import Config
from selfsup.core.files import atomic_write
from selfsup.engine.run_log import read_metrics
from selfsup.runs.curves import plot_run, plots_available

# The encoders ``eval.random_baseline`` evaluates beside the pretrained one: the same architecture, initialised
# from ``trainer.seed``, two ways. key -> (file in the run directory, name in tables). timm's init is the backbone
# as the config builds it: a timm ResNet zeroes the last BN of every block unless
# ``backbone.model_args.zero_init_last=false`` (then both inits have BN weights 1 and differ in the convolutions).
RANDOM_BASELINES = {
    # With backbone.init=torch_default the run (and this "as configured" copy) starts from PyTorch's init too.
    "timm_init": ("eval_random_init.json", "random init (timm's own, as configured)"),
    "torch_default_init": ("eval_random_init_torch_default.json",
                           "random init (PyTorch's reset_parameters(): BN weight 1)"),
}


def read_random_baselines(run_dir: Path) -> dict[str, dict]:
    """The random-init baselines' results a run wrote, keyed like :data:`RANDOM_BASELINES` (absent ones skipped)."""
    out = {}
    for key, (file, _) in RANDOM_BASELINES.items():
        if (run_dir / file).is_file():
            out[key] = json.loads((run_dir / file).read_text())
    return out


def compare_with_random(results: dict, baselines: dict[str, dict]) -> dict[str, dict]:
    """Per protocol, the pretrained encoder's top-1 against the STRONGER random init's (which one is named).

    ``results``: ``{protocol: {"top1": ...}}`` (eval.json); ``baselines``: ``{init key: such a dict}``.
    Returns ``{protocol: {"pretrained", "random", "stronger_init", "margin", "beats"}}`` for every protocol
    that the pretrained encoder and at least one baseline report.
    """
    out = {}
    for protocol, value in results.items():
        top1 = value.get("top1") if isinstance(value, dict) else None
        scores = {key: base[protocol]["top1"] for key, base in baselines.items()
                  if isinstance(base.get(protocol), dict) and isinstance(base[protocol].get("top1"), (int, float))}
        if not isinstance(top1, (int, float)) or not scores:
            continue
        stronger = max(scores, key=lambda key: scores[key])
        out[protocol] = {"pretrained": top1, "random": scores[stronger], "stronger_init": stronger,
                         "margin": top1 - scores[stronger], "beats": top1 > scores[stronger]}
    return out


def run_summary(run_dir: Path, cfg: Config, *, total_steps: int, results: dict, plots: list[Path]) -> dict[str, Any]:
    """The run's key numbers: steps, time, throughput, losses, evaluation (against the stronger random init
    with ``eval.random_baseline``), where things are."""
    rows = read_metrics(run_dir)
    last = rows[-1] if rows else {}
    losses = [row["loss"] for row in rows if isinstance(row.get("loss"), (int, float))]
    seconds = last.get("time_s")
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    baselines = read_random_baselines(run_dir) if cfg.eval.random_baseline and results else {}
    return {
        "run_dir": str(run_dir), "method": cfg.method.name, "backbone": cfg.backbone.name,
        "steps": last.get("step", 0), "total_steps": total_steps, "epochs": last.get("epoch"),
        "train_time_s": seconds,
        "images_per_s": last["step"] * cfg.trainer.batch_size / seconds if seconds else None,
        "final_loss": losses[-1] if losses else None, "best_loss": min(losses) if losses else None,
        "skipped_steps": last.get("skipped_steps", 0),
        "eval": {name: value.get("top1") for name, value in results.items() if isinstance(value, dict)},
        "random_baselines": {key: {name: value.get("top1") for name, value in base.items() if isinstance(value, dict)}
                             for key, base in baselines.items()},
        "vs_random": compare_with_random(results, baselines),
        "encoder": str(run_dir / "encoder"),
        "checkpoint": str(checkpoints[-1]) if checkpoints else None,
        "plots": [str(p) for p in plots],
    }


def format_summary(summary: dict[str, Any]) -> str:
    """A two-column plain-text table of :func:`run_summary`."""
    s = summary
    lines = [("run", f"{s['run_dir']}  ({s['method']}, {s['backbone']})"),
             ("steps", f"{s['steps']} / {s['total_steps']}" + (f"  ({s['epochs']:.3g} epochs)" if s["epochs"] else ""))]
    if s["train_time_s"] is not None:
        lines.append(("training time", _duration(s["train_time_s"])))
    if s["images_per_s"]:
        lines.append(("throughput", f"{s['images_per_s']:.0f} images/s (end to end)"))
    if s["final_loss"] is not None:
        lines.append(("loss", f"{s['final_loss']:.4f} final, {s['best_loss']:.4f} best"))
    if s["skipped_steps"]:
        lines.append(("skipped steps", f"{s['skipped_steps']} (non-finite loss or gradient)"))
    vs_random = s.get("vs_random", {})
    for name, top1 in s["eval"].items():
        text = f"{100 * top1:.2f}%" if isinstance(top1, (int, float)) else str(top1)
        if name in vs_random:
            c = vs_random[name]
            text += (f"  vs {100 * c['random']:.2f}% {RANDOM_BASELINES[c['stronger_init']][1]}, the stronger random "
                     f"init: {100 * c['margin']:+.2f} points" + ("" if c["beats"] else " (does NOT beat it)"))
        lines.append((f"{name} top-1", text))
    lines.append(("encoder", s["encoder"]))
    if s["checkpoint"]:
        lines.append(("checkpoint", s["checkpoint"]))
    lines.append(("plots", ", ".join(s["plots"]) if s["plots"] else "none (pip install 'selfsup[plots]')"))
    width = max(len(key) for key, _ in lines)
    return "\n".join(["summary", *(f"  {key:<{width}}  {value}" for key, value in lines)])


def _duration(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02.0f}s" if minutes else f"{secs:.1f}s"


def finish_run(run_dir: Path, cfg: Config, *, total_steps: int, results: dict) -> str:
    """Plots (when matplotlib is installed and ``run.plots``), ``summary.json``, and the table to print."""
    plots: list[Path] = []
    if cfg.run.plots and plots_available():
        try:
            plots = plot_run(run_dir)
        except Exception as err:  # a plot is a convenience: never fail a finished run over it
            warnings.warn(f"could not write plots for {run_dir}: {err}", stacklevel=2)
    summary = run_summary(run_dir, cfg, total_steps=total_steps, results=results, plots=plots)
    atomic_write(run_dir / "summary.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2) + "\n"))
    return format_summary(summary)
