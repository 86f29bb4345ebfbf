"""Opening what training wrote: a run directory (config.yaml, checkpoints/, encoder/) or an exported encoder."""
from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from selfsup.engine.checkpoint import latest_checkpoint
from selfsup.config import Config, parse_yaml, resolve_config
from selfsup.core.errors import CheckpointError, SelfsupError
from selfsup.core.files import reading
from selfsup.data import open_split
from selfsup.engine.build import build_method
from selfsup.runs.export import load_encoder


def is_run_dir(path: Path) -> bool:
    return (Path(path) / "config.yaml").is_file()


def open_encoder(path: str | Path, overrides: list[str] | None = None) -> tuple[nn.Module, Config, Path]:
    """The encoder at ``path`` (a run directory or an export), the config to evaluate it with, and where results go.

    For a run, the config is its resolved ``config.yaml``; for an export, the recipe recorded in
    its ``config.json``. ``overrides`` (``data.name=...``) apply on top in both cases.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path} does not exist (give a run directory or an exported encoder)")
    with reading(path / "config.yaml"):
        text = (path / "config.yaml").read_text() if is_run_dir(path) else None
    if text is not None:
        cfg = resolve_config(parse_yaml(text, f"run config {path / 'config.yaml'}"), overrides)
        if (path / "encoder" / "config.json").is_file():
            return load_encoder(path / "encoder"), cfg, path
        return encoder_from_checkpoint(path, cfg), cfg, path
    with reading(path / "config.json"):
        text = (path / "config.json").read_text() if (path / "config.json").is_file() else None
    if text is not None:
        recipe = json.loads(text).get("selfsup", {}).get("recipe") or {}
        return load_encoder(path), resolve_config(dict(recipe), overrides), path
    raise SelfsupError(f"{path} is neither a run directory (config.yaml) nor an exported encoder (config.json)")


def encoder_from_checkpoint(run_dir: Path, cfg: Config) -> nn.Module:
    """Rebuild the method from the run's newest checkpoint and return its encoder (eval mode)."""
    found = latest_checkpoint(run_dir / "checkpoints")
    if found is None:
        raise CheckpointError(f"{run_dir} has neither encoder/ nor a checkpoint to take the encoder from")
    method = build_method(cfg, open_split(cfg.data, "train", seed=cfg.trainer.seed), init_weights=False)
    method.load_state_dict(found[1]["model"])
    return method.encoder.eval()
