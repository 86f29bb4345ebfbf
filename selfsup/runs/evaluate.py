"""Evaluating what training wrote: ``evaluate_run(path, protocols)`` (``selfsup eval``'s body).

The results merge into ``<path>/eval.json`` (one object per protocol, each with ``top1``), and
frozen features are cached beside them, so the next protocol reuses them.
"""
from __future__ import annotations

import json
from pathlib import Path

from selfsup.config import Config
from selfsup.data import default_cache_dir, open_split
from selfsup.evaluation.finetune import validate_finetune
from selfsup.evaluation.protocols import evaluate
from selfsup.runs.open_run import is_run_dir, open_encoder

PROTOCOL_SETS = {"frozen": ["knn", "linear"], "all": ["knn", "linear", "finetune"]}


def evaluate_run(path: str | Path, protocol: str = "frozen", overrides: list[str] | None = None) -> dict:
    """Evaluate the encoder of a run directory or an export with ``protocol`` (knn | linear |
    finetune | frozen = knn + linear | all); returns ``{protocol_key: {"top1": ...}}`` and merges it
    into ``<path>/eval.json``. ``overrides`` (``data.*``, ``eval.*`` keys) apply on top of the
    run's (or the export's recorded) config."""
    encoder, cfg, out_dir = open_encoder(path, overrides)
    protocols = PROTOCOL_SETS.get(protocol, [protocol])
    if "finetune" in protocols:  # bad eval.finetune.* values fail before any data is decoded
        validate_finetune(cfg.eval.finetune)
    plots_dir = Path(out_dir) / "plots" if cfg.run.plots else None  # t-SNE, linear-probe confusion matrix
    results = evaluate(encoder, open_split(cfg.data, "train", seed=cfg.trainer.seed),
                       open_split(cfg.data, "val", seed=cfg.trainer.seed), cfg.eval, protocols=protocols,
                       cache_dir=features_cache(out_dir, cfg), plots_dir=plots_dir)
    file = Path(out_dir) / "eval.json"
    merged = json.loads(file.read_text()) if file.is_file() else {}
    merged.update(results)
    file.write_text(json.dumps(merged, indent=2) + "\n")
    return results


def features_cache(out_dir: str | Path, cfg: Config) -> Path:
    """Where frozen features are kept: ``<run>/features`` for a run directory, else
    ``<data.cache_dir>/features`` (an export directory holds only the export)."""
    if is_run_dir(Path(out_dir)):
        return Path(out_dir) / "features"
    return (Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else default_cache_dir()) / "features"
