"""Every range and consistency check of config values (types are checked while loading).

``validate_config`` at load time (the values alone), ``validate_paths`` when training starts
(what must exist on disk), ``validate_run`` when the data and the method are known. Each raises a
one-line :class:`~selfsup.core.errors.ConfigError` naming the key.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from selfsup.config.schema import Config, MethodConfig, config_to_dict
from selfsup.core.errors import ConfigError, DataError

_AT_LEAST_ONE = ("trainer.epochs", "trainer.max_steps", "trainer.batch_size", "trainer.grad_accum",
                 "trainer.checkpoint_every", "trainer.log_every", "data.image_size", "data.num_samples",
                 "data.num_classes", "eval.batch_size")
_AT_LEAST_ZERO = ("trainer.lr", "trainer.warmup_epochs", "trainer.weight_decay", "trainer.keep_checkpoints",
                  "trainer.seed", "data.in_memory_max_gb")


def _value(cfg: Config, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return out


def _fail(key: str, value: Any, rule: str) -> ConfigError:
    return ConfigError(f"config key '{key}' must be {rule}, got {value}")


def validate_config(cfg: Config) -> Config:
    """Check the ranges of ``cfg``'s values (sizes >= 1, rates >= 0, finite numbers, ...); returns ``cfg``."""
    for key, value in _flat(config_to_dict(cfg)).items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise _fail(key, value, "a finite number")
    for key in _AT_LEAST_ONE:
        if (value := _value(cfg, key)) is not None and value < 1:
            raise _fail(key, value, ">= 1")
    for key in _AT_LEAST_ZERO:
        if (value := _value(cfg, key)) < 0:
            raise _fail(key, value, ">= 0")
    t, e = cfg.trainer, cfg.eval
    if t.min_lr > 1:
        raise _fail("trainer.min_lr", t.min_lr, "in [0, 1] (a fraction of the peak learning rate)")
    if not 0 <= t.momentum < 1:
        raise _fail("trainer.momentum", t.momentum, "in [0, 1)")
    if cfg.data.workers is not None and cfg.data.workers < 0:
        raise _fail("data.workers", cfg.data.workers, ">= 0 (or null: one per CPU core)")
    if cfg.data.streaming == "always" and cfg.data.name != "imagefolder":
        raise _fail("data.streaming", "always", f"auto or never for data.name={cfg.data.name} "
                    "(only imagefolder data streams)")
    if t.lars_trust_coefficient <= 0:
        raise _fail("trainer.lars_trust_coefficient", t.lars_trust_coefficient, "> 0 (LARS's eta, e.g. 0.001 or 0.02)")
    if t.grad_clip is not None and t.grad_clip <= 0:
        raise _fail("trainer.grad_clip", t.grad_clip, "> 0 (or null for no clipping)")
    if e.knn_temperature <= 0:
        raise _fail("eval.knn_temperature", e.knn_temperature, "> 0")
    if not e.knn_k or min(e.knn_k) < 1:
        raise _fail("eval.knn_k", e.knn_k, "a non-empty list of integers >= 1")
    _validate_method(cfg.method)
    return cfg


def _validate_method(method: MethodConfig) -> None:
    """Rules every method's keys share by name: sizes, dimensions, temperatures, probabilities,
    momenta and crop scales. A method checks anything more specific itself."""
    for f in dataclasses.fields(method):
        key, value = f"method.{f.name}", getattr(method, f.name)
        if value is None or isinstance(value, (bool, str)):
            continue
        name = f.name
        if name.endswith("_size") and value < 1:
            raise _fail(key, value, ">= 1")
        if (name.endswith(("_dim", "_layers")) or name.startswith("num_")) and value < 0:
            raise _fail(key, value, ">= 0")
        if name.endswith(("temp", "temperature", "_lr_scale")) and value <= 0:
            raise _fail(key, value, "> 0")
        if (name.endswith("_p") or "momentum" in name) and not 0 <= value <= 1:
            raise _fail(key, value, "in [0, 1]")
        if name.endswith("crop_scale") and not 0 < value[0] <= value[1] <= 1:
            raise _fail(key, list(value), "[low, high] with 0 < low <= high <= 1")


def validate_paths(cfg: Config, run_dir: Path) -> None:
    """Paths the run will read must exist, before any data is decoded or any step is taken."""
    d = cfg.data
    for key, value in (("data.train", d.train), ("data.val", d.val), ("data.root", None if d.download else d.root)):
        if value is not None and not Path(value).expanduser().exists():
            raise DataError(f"{key}={Path(value).expanduser().resolve()} does not exist")
    if d.name == "imagefolder" and d.train is None and d.root is None:
        raise DataError("data.train is not set: data.name=imagefolder needs data.train=PATH (a folder of class folders)")
    if d.name == "imagefolder" and cfg.eval.at_end and d.val is None and d.root is None:
        raise DataError("data.val is not set: the evaluation at the end needs data.val=PATH (or set eval.at_end=false)")
    if cfg.resume not in ("auto", "never") and not Path(cfg.resume).expanduser().is_file():
        raise ConfigError(f"resume={cfg.resume} is no file: give a checkpoint (RUN/checkpoints/step-XXXXXXXX.pt), "
                          "auto or never")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run.dir={run_dir} exists and is not a folder")


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
    local = getattr(cfg.method, "local_crop_size", None)  # a local crop is a part of the image
    if local is not None and local > min(image_hw):
        raise ConfigError(f"method.local_crop_size={local} is larger than the {image_hw[0]}x{image_hw[1]} images "
                          f"(use at most {min(image_hw)}, or raise data.image_size)")
    return micro
