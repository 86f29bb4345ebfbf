"""Every range and consistency check of config values (types are checked while loading).

``validate_config`` at load time (the values alone), ``validate_paths`` when training starts
(what must exist on disk), ``validate_run`` when the data and the method are known. Each raises a
one-line :class:`~selfsup.core.errors.ConfigError` naming the key.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
from pathlib import Path
from typing import Any

from selfsup.config.schema import Config, config_to_dict, field_bounds
from selfsup.core.errors import ConfigError, DataError
from selfsup.core.files import check_writable_dir
from selfsup.core.registry import METHODS


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return out


def _fail(key: str, value: Any, rule: str) -> ConfigError:
    return ConfigError(f"config key '{key}' must be {rule}, got {value}")


def validate_config(cfg: Config) -> Config:
    """Check the ranges of ``cfg``'s values (finite numbers, the bounds every field declares with
    :func:`~selfsup.config.schema.bounded`, and the rules below); returns ``cfg``."""
    for key, value in _flat(config_to_dict(cfg)).items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise _fail(key, value, "a finite number")
    for f in dataclasses.fields(cfg):  # the core sections; the method section is checked last
        if f.name != "method" and dataclasses.is_dataclass(section := getattr(cfg, f.name)):
            _check_bounds(section, f"{f.name}.")
    t, e = cfg.trainer, cfg.eval
    if t.min_lr > 1:
        raise _fail("trainer.min_lr", t.min_lr, "in [0, 1] (a fraction of the peak learning rate)")
    if cfg.data.workers is not None and cfg.data.workers < 0:
        raise _fail("data.workers", cfg.data.workers, ">= 0 (or null: one per CPU core)")
    if cfg.data.streaming == "always" and cfg.data.name not in ("imagefolder", "shards"):
        raise _fail("data.streaming", "always", f"auto or never for data.name={cfg.data.name} "
                    "(only imagefolder and shards data stream)")
    if t.lars_trust_coefficient <= 0:
        raise _fail("trainer.lars_trust_coefficient", t.lars_trust_coefficient, "> 0 (LARS's eta, e.g. 0.001 or 0.02)")
    if t.grad_clip is not None and t.grad_clip <= 0:
        raise _fail("trainer.grad_clip", t.grad_clip, "> 0 (or null for no clipping)")
    _check_optimizer_and_schedule(t)
    log_with_names(cfg.run.log_with)  # tracker names (whether their packages are installed: when training starts)
    if not e.knn_k or min(e.knn_k) < 1:
        raise _fail("eval.knn_k", e.knn_k, "a non-empty list of integers >= 1")
    validate_method(cfg.method)  # what a method checks beyond its fields' bounds, it checks itself
    return cfg


def _check_optimizer_and_schedule(t: Any) -> None:
    """``trainer.optimizer``: a name of timm's optimizer factory; ``trainer.schedule``'s own keys."""
    from timm.optim import list_optimizers

    names = list_optimizers()
    base = t.optimizer.lower().removeprefix("lookahead_")  # timm's Lookahead wrapper: lookahead_adamw, ...
    if base not in names:
        close = difflib.get_close_matches(base, names, n=1)
        hint = f"did you mean '{close[0]}'?" if close else "timm.optim.list_optimizers() names them all"
        raise ConfigError(f"trainer.optimizer={t.optimizer} is no optimizer of timm's factory; {hint}")
    if t.schedule == "multistep" and not t.lr_milestones:
        raise _fail("trainer.lr_milestones", [], "a non-empty list of epochs with trainer.schedule=multistep")
    if any(m < 0 for m in t.lr_milestones):
        raise _fail("trainer.lr_milestones", t.lr_milestones, "epochs >= 0")


def log_with_names(value: list[str] | str) -> list[str]:
    """``run.log_with`` as a list of tracker names (lower case): ``[]`` for none, ``["auto"]`` for auto;
    an unknown name is a one-line ConfigError with the closest known one."""
    from accelerate.utils import LoggerType

    items = value.split(",") if isinstance(value, str) else list(value)
    names = [str(item).strip().lower() for item in items if str(item).strip()]
    if names in (["auto"], ["none"], []):
        return [] if names != ["auto"] else names
    if {"auto", "none"} & set(names):
        raise ConfigError(f"run.log_with={value}: auto and none stand alone, not in a list of trackers")
    known = [t.value for t in LoggerType if t.value != "all"]
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known + ["auto", "none"], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"run.log_with: unknown tracker '{name}'{hint}; trackers: {', '.join(known)}, "
                              "or auto, or none")
    return list(dict.fromkeys(names))


def validate_method(method: Any) -> Any:
    """The checks of :func:`validate_config` on a ``method`` section alone (finite numbers, declared
    bounds), for a method config built in Python (``create_method``); returns ``method``."""
    for key, value in _flat(config_to_dict(method), "method.").items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise _fail(key, value, "a finite number")
    _check_bounds(method, "method.")
    return method


def _check_bounds(section: Any, prefix: str) -> None:
    """Every field of a config section (and of its sub-sections) against the bounds it declares
    (:func:`~selfsup.config.schema.bounded`); a ``None`` value and a field without bounds pass."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            _check_bounds(value, f"{prefix}{f.name}.")
        elif (bounds := field_bounds(f)) is not None and value is not None and not bounds.admits(value):
            raise _fail(prefix + f.name, list(value) if bounds.pair else value, bounds.describe())


def validate_paths(cfg: Config, run_dir: Path) -> None:
    """Paths the run will read must exist, before any data is decoded or any step is taken."""
    d = cfg.data
    for key, value in (("data.train", d.train), ("data.val", d.val), ("data.root", None if d.download else d.root)):
        if value is not None and d.name != "shards" and not Path(value).expanduser().exists():  # shards: patterns, URLs
            raise DataError(f"{key}={Path(value).expanduser().resolve()} does not exist")
    if d.name == "imagefolder" and d.train is None and d.root is None:
        raise DataError("data.train is not set: data.name=imagefolder needs data.train=PATH (a folder of class folders)")
    if d.name == "shards" and d.train is None and d.root is None:
        raise DataError("data.train is not set: data.name=shards needs data.train=SHARDS (a folder, glob or brace "
                        "pattern of .tar shards) or data.root=DIR")
    if d.name == "imagefolder":
        _refuse_unlabelled(cfg)
    if d.name in ("imagefolder", "shards") and cfg.eval.at_end and d.val is None and d.root is None:
        raise DataError("data.val is not set: the evaluation at the end needs data.val=PATH (or set eval.at_end=false)")
    if cfg.resume not in ("auto", "never") and not Path(cfg.resume).expanduser().is_file():
        raise ConfigError(f"resume={cfg.resume} is no file: give a checkpoint (RUN/checkpoints/step-XXXXXXXX.pt), "
                          "auto or never")
    init = cfg.backbone.init_from
    if init is not None and not Path(init).expanduser().exists():
        raise ConfigError(f"backbone.init_from={Path(init).expanduser()} does not exist: give an exported encoder, "
                          "a run directory or a checkpoint file")
    if cfg.backbone.init_sha256 and init is None:
        raise ConfigError("backbone.init_sha256 is set without backbone.init_from (the weights it would check)")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run.dir={run_dir} exists and is not a folder")
    check_writable_dir(run_dir, "run.dir")  # read-only, another user's, or under a file: say so before training


def _refuse_unlabelled(cfg: Config) -> None:
    """An imagefolder split without class sub-folders (unlabelled images) pretrains, but the evaluation at
    the end (both splits) and a method trained on labels (``data.train``) need labels: one-line DataError."""
    d, uses_labels = cfg.data, METHODS.get(cfg.method.name).uses_labels
    root = [Path(d.root) / name for name in ("train", "val", "test")] if d.root else []
    splits = (("data.train", [d.train] if d.train else root[:1], cfg.eval.at_end or uses_labels),
              ("data.val", [d.val] if d.val else root[1:], cfg.eval.at_end))
    for key, paths, needed in splits:  # each split's folder, found as selfsup.data finds it
        path = next((Path(p).expanduser() for p in paths if Path(p).expanduser().is_dir()), None)
        if not needed or path is None or not _unlabelled(path):
            continue
        where = f"{key}={path.resolve()} has no class sub-folders (unlabelled images)"
        if key == "data.train" and uses_labels:
            raise DataError(f"method.name={cfg.method.name} trains on labels, but {where}: make it a folder of "
                            "<class>/<image> folders, or pretrain with a self-supervised method")
        raise DataError(f"{where}: the evaluation at the end needs labels; set eval.at_end=false to pretrain "
                        f"only, or make {key} a folder of <class>/<image> folders")


def _unlabelled(folder: Path) -> bool:
    """An image folder without class sub-folders (non-hidden folders; as selfsup.data.imagefolder reads it)."""
    return folder.is_dir() and not any(e.is_dir() and not e.name.startswith(".") for e in os.scandir(folder))


def validate_run(cfg: Config, *, num_images: int, image_hw: tuple[int, int], processes: int,
                 min_batch_size: int) -> int:
    """Check the batch against the data, the processes and the method, and crop sizes against the
    images. Returns the per-process micro-batch size."""
    t = cfg.trainer
    if t.batch_size % (processes * t.grad_accum):
        raise ConfigError(f"trainer.batch_size={t.batch_size} is not divisible by processes x trainer.grad_accum = "
                          f"{processes} x {t.grad_accum}")
    micro = t.batch_size // (processes * t.grad_accum)
    if micro < min_batch_size:
        raise ConfigError(f"trainer.batch_size={t.batch_size} gives {micro} images per process and step; "
                          f"{cfg.method.name} needs at least {min_batch_size}")
    if t.batch_size > num_images:
        raise ConfigError(f"trainer.batch_size={t.batch_size} is larger than the dataset ({num_images} images)")
    check_image_sides(cfg.method, image_hw)
    return micro


def check_image_sides(method: Any, image_hw: tuple[int, int]) -> None:
    """A part of the image (e.g. DINO's local crops: fields declared ``at_most_image_side``) fits in the image."""
    for f in dataclasses.fields(method):
        side = getattr(method, f.name)
        if f.metadata.get("at_most_image_side") and side is not None and side > min(image_hw):
            raise ConfigError(f"method.{f.name}={side} is larger than the {image_hw[0]}x{image_hw[1]} images "
                              f"(use at most {min(image_hw)}, or raise data.image_size)")
