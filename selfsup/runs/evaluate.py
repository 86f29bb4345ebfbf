"""Evaluating what training wrote: ``evaluate_run(path, protocols)`` (``selfsup eval``'s body).

The results merge into ``<path>/eval.json`` (one object per protocol, each with ``top1``), and
frozen features are cached beside them, so the next protocol reuses them. A path that cannot be
written (a read-only mount, another user's run) costs a one-line warning per file, never the results.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from selfsup.config import Config
from selfsup.core.threads import apply_threads
from selfsup.core.files import PathError, atomic_write, check_writable_dir, reading
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
    apply_threads(cfg.run.threads)
    protocols = PROTOCOL_SETS.get(protocol, [protocol])
    if "finetune" in protocols:  # bad eval.finetune.* values fail before any data is decoded
        validate_finetune(cfg.eval.finetune)
    plots_dir = Path(out_dir) / "plots" if cfg.run.plots else None  # t-SNE, linear-probe confusion matrix
    cache_dir = features_cache(out_dir, cfg)
    writable = _writable(Path(out_dir))  # a read-only run or export: evaluate all the same, write nothing there
    if not writable:
        plots_dir, cache_dir = None, None if cache_dir.is_relative_to(out_dir) else cache_dir
    results = evaluate(encoder, open_split(cfg.data, "train", seed=cfg.trainer.seed),
                       open_split(cfg.data, "val", seed=cfg.trainer.seed), cfg.eval, protocols=protocols,
                       cache_dir=cache_dir, plots_dir=plots_dir)
    if writable:
        try:
            _merge_into(Path(out_dir) / "eval.json", results)
        except PathError as err:  # e.g. another user's eval.json: the results are still returned (and printed)
            warnings.warn(f"{err}; results not saved", stacklevel=2)
    return results


def _writable(out_dir: Path) -> bool:
    """Whether ``out_dir`` can be written; if not, one warning says the results are only printed."""
    try:
        check_writable_dir(out_dir, "")
    except PathError as err:
        warnings.warn(f"{err}; the results are only printed (no eval.json, plots or feature cache there)",
                      stacklevel=3)
        return False
    return True


def _merge_into(file: Path, results: dict) -> None:
    """Merge ``results`` into the JSON object in ``file`` (atomically, umask permissions)."""
    with reading(file):
        merged = json.loads(file.read_text()) if file.is_file() else {}
    merged.update(results)
    atomic_write(file, lambda tmp: tmp.write_text(json.dumps(merged, indent=2) + "\n"))


def features_cache(out_dir: str | Path, cfg: Config) -> Path:
    """Where frozen features are kept: ``<run>/features`` for a run directory, else
    ``<data.cache_dir>/features`` (an export directory holds only the export)."""
    if is_run_dir(Path(out_dir)):
        return Path(out_dir) / "features"
    return (Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else default_cache_dir()) / "features"
