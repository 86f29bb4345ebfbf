"""Typed configuration: dataclasses, YAML recipes and ``key=value`` overrides.

A recipe is a nested YAML mapping whose sections mirror :class:`Config`. The ``method``
section is typed by the config class the chosen method registers, so every method can add
its own keys (MoCo's queue size, DINO's local crops) and still have them checked. An unknown
key or a value of the wrong type raises :class:`~selfsup.errors.ConfigError` naming the key and
the closest valid one.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from selfsup.errors import ConfigError, DataError

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
DEFAULT_RECIPE = "simclr-digits"


@dataclass
class MethodConfig:
    """Base of every method's config; a method registers a subclass with its own keys."""

    name: str = "simclr"


@dataclass
class BackboneConfig:
    name: str = "resnet18"
    small_stem: bool = False  # 3x3 stride-1 first conv and no max-pool, for 32-px images
    pretrained: bool = False
    model_args: dict = field(default_factory=dict)  # **kwargs for create_backbone (timm or sequence model)


@dataclass
class DataConfig:
    name: str = "digits"  # digits | synthetic | imagefolder | sequence | cifar10 | cifar100 | stl10
    train: str | None = None  # imagefolder / sequence: path of the training split
    val: str | None = None  # imagefolder / sequence: path of the evaluation split
    root: str | None = None  # torchvision datasets: where the files are (or go)
    image_size: int | None = None  # resize on load; None keeps the native size
    download: bool = False
    cache_dir: str | None = None
    num_samples: int | None = None  # synthetic only
    num_classes: int | None = None  # synthetic only
    on_bad_file: Literal["skip", "error"] = "skip"  # imagefolder: unreadable files are skipped (one warning) or fatal
    in_memory_max_gb: float = 8.0  # imagefolder: larger decoded splits stream through DataLoader workers
    workers: int | None = None  # streaming DataLoader workers (None: one per CPU core, at most 8)
    streaming: Literal["auto", "always", "never"] = "auto"  # imagefolder: auto streams above in_memory_max_gb


@dataclass
class TrainerConfig:
    epochs: int = 100
    max_steps: int | None = None  # stop early (the schedules still span `epochs`)
    batch_size: int = 256  # global, over all processes and accumulation steps
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    seed: int = 0
    optimizer: Literal["sgd", "adamw", "lars"] = "sgd"
    lr: float = 0.3  # base learning rate, scaled by `lr_scaling` from batch 256
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"
    min_lr: float = 0.0  # end of the cosine, as a fraction of the peak learning rate
    warmup_epochs: float = 10.0
    weight_decay: float = 1e-6  # never applied to biases and normalisation parameters
    momentum: float = 0.9  # SGD / LARS momentum; AdamW's beta1
    lars_trust_coefficient: float = 0.001  # LARS eta (You et al. 2017); vicreg-cifar10 uses 0.02, the usual CIFAR-10 setting
    lars_trust_clip: bool = False  # LARS: clip the layer-wise rate at the global rate (LARC)
    grad_clip: float | None = None  # max global gradient norm
    grad_accum: int = 1
    checkpoint_every: int = 1000  # steps; a checkpoint is also written at the end
    keep_checkpoints: int = 2
    log_every: int = 10  # steps between metrics.jsonl rows (and the only host syncs)
    channels_last: bool = False
    compile: bool = False  # torch.compile the training step (the exported encoder stays the eager module)
    nonfinite: Literal["stop", "skip"] = "stop"  # a NaN/inf loss stops the run, or its step is skipped (and counted)
    sync_bn: bool | None = None  # BN statistics over the global batch with >1 process (None: the method's default)


@dataclass
class FinetuneConfig:
    """``selfsup eval --protocol finetune``: encoder + linear head trained on the labels (selfsup.evaluation.finetune)."""

    epochs: int = 20
    max_steps: int | None = None  # stop early (the schedule still spans `epochs`)
    batch_size: int = 128
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1  # at batch 256, scaled linearly with batch_size
    weight_decay: float = 5e-4  # never on biases and normalisation parameters
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    min_lr: float = 0.0  # end of the cosine, as a fraction of the peak
    train_blocks: int = -1  # -1: the whole encoder; k >= 0: only its last k blocks (0: the head alone)
    layer_decay: float = 1.0  # block i of n gets lr * layer_decay ** (n - i); the head gets lr
    crop_scale: tuple[float, float] = (0.35, 1.0)  # random resized crop of the training images
    hflip_p: float = 0.5  # 0 for data that is not mirror-symmetric (digits)
    label_smoothing: float = 0.0
    train_subset: int | None = None  # fine-tune on this many training images (a fixed random subset)
    from_scratch: bool = False  # the control: same architecture, random initialisation
    seed: int = 0


@dataclass
class EvalConfig:
    at_end: bool = True  # evaluate the encoder when training ends
    knn_k: list[int] = field(default_factory=lambda: [20, 200])
    knn_temperature: float = 0.07
    knn_index: Literal["flat", "ivf"] = "flat"  # faiss exact search, or an inverted file for millions of features
    linear: bool = True
    linear_loss: Literal["softmax", "hinge"] = "softmax"  # linear probe: cross-entropy or Crammer-Singer multiclass SVM
    linear_solver: Literal["sgd", "lbfgs"] = "sgd"  # sgd: the lr x wd grid as parallel heads; lbfgs: exact, softmax only
    random_baseline: bool = False  # also evaluate a randomly initialised encoder, for comparison
    batch_size: int = 512
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


@dataclass
class RunConfig:
    dir: str | None = None  # default: runs/<recipe name>
    tensorboard: bool = True  # also log metrics.jsonl's rows to <run.dir>/tensorboard when tensorboard is installed
    plots: bool = True  # write <run.dir>/plots/*.png at the end when matplotlib is installed


@dataclass
class Config:
    method: MethodConfig = field(default_factory=MethodConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    resume: str = "auto"  # auto | never | PATH of a checkpoint
    recipe: str = ""  # the recipe's name, recorded for the run directory and the export


# --------------------------------------------------------------------------- loading


def find_recipe(recipe: str | None) -> Path:
    """Resolve a recipe given as a path or as a name under ``recipes/`` (``simclr-digits``)."""
    recipe = recipe or DEFAULT_RECIPE
    path = Path(recipe)
    if path.is_file():
        return path
    named = RECIPES_DIR / (recipe if recipe.endswith(".yaml") else recipe + ".yaml")
    if named.is_file():
        return named
    names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    close = difflib.get_close_matches(path.stem, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (recipes: {', '.join(names)})"
    raise ConfigError(f"recipe '{recipe}' not found{hint}")


def load_config(recipe: str | None = None, overrides: list[str] | None = None) -> Config:
    """Build a typed :class:`Config` from a recipe (path or name) and ``key=value`` overrides."""
    path = find_recipe(recipe)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {path} must be a mapping of sections, got {type(raw).__name__}")
    raw.setdefault("recipe", path.stem)
    return resolve_config(raw, overrides)


def resolve_config(raw: dict, overrides: list[str] | None = None) -> Config:
    """Apply ``key=value`` overrides to a nested dict (a recipe, a run's config.yaml) and type it."""
    for item in overrides or []:
        apply_override(raw, item)
    return config_from_dict(raw)


def apply_override(raw: dict, item: str) -> None:
    """Set ``a.b.c=value`` in a nested dict; the value is parsed as YAML (``1e-3``, ``true``, ``[1,2]``)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{item}' is not of the form key=value")
    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key '{key}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def config_from_dict(raw: dict) -> Config:
    """Type-check a nested dict against the schema (the method section by its registered class)."""
    from selfsup.methods import method_config_class  # late: methods import this module

    method_raw = raw.get("method") or {}
    if not isinstance(method_raw, dict):
        raise ConfigError("config key 'method' must be a section (method.name=...)")
    method_cls = method_config_class(method_raw.get("name", MethodConfig.name))
    schemas = {"method": method_cls}
    valid = _all_keys(Config, schemas)
    return validate_config(_build(Config, raw, "", schemas, valid))


def config_to_dict(cfg: Any) -> dict:
    """A plain nested dict (lists, not tuples) fit for YAML and JSON."""
    return _plain(dataclasses.asdict(cfg))


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


# --------------------------------------------------------------------------- checking


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _all_keys(cls: type, schemas: dict[str, type], prefix: str = "") -> list[str]:
    keys = []
    for f, hint in _fields(cls):
        sub = schemas.get(f.name) if not prefix else None
        sub = sub or (hint if dataclasses.is_dataclass(hint) else None)
        if sub is not None:
            keys += _all_keys(sub, {}, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def _build(cls: type, raw: dict, prefix: str, schemas: dict[str, type], valid: list[str]) -> Any:
    fields = {f.name: hint for f, hint in _fields(cls)}
    for key in raw:
        if key not in fields:
            full = prefix + str(key)
            close = difflib.get_close_matches(full, valid, n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{full}'{hint}")
    kwargs = {}
    for name, hint in fields.items():
        if name not in raw:
            continue
        sub = schemas.get(name) if not prefix else None
        sub = sub or (hint if dataclasses.is_dataclass(hint) else None)
        full = prefix + name
        if sub is not None:
            if not isinstance(raw[name], dict):
                raise ConfigError(f"config key '{full}' is a section; set its keys as {full}.KEY=value")
            kwargs[name] = _build(sub, raw[name], full + ".", {}, valid)
        else:
            kwargs[name] = _check(full, raw[name], hint)
    if not prefix and "method" not in kwargs:
        kwargs["method"] = schemas["method"]()
    return cls(**kwargs)


def _check(key: str, value: Any, hint: Any) -> Any:
    """Return ``value`` converted to ``hint`` (int -> float only), or raise a one-line ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check(key, value, arg)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint_text = f" (did you mean '{close[0]}'?)" if close else ""
            choices = " | ".join(str(a) for a in args)
            raise ConfigError(f"config key '{key}' must be one of {choices}, got '{value}'{hint_text}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list like [1, 2], got '{value}'")
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            raise ConfigError(f"config key '{key}' expects {len(args)} values, got {len(value)}")
        item_type = args[0] if args else Any
        return [_check(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
    return _check_scalar(key, value, hint)


def _check_scalar(key: str, value: Any, hint: Any) -> Any:
    if hint is Any:
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (bool, str) and isinstance(value, hint):
        return value
    if hint is dict and isinstance(value, dict):  # free-form (backbone.model_args): values unchecked
        return dict(value)
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. a path or name that YAML read as a number
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", dict: "a mapping like {a: 1}"}
    raise ConfigError(f"config key '{key}' expects {names.get(hint, hint)}, got '{value}'")


# --------------------------------------------------------------------------- values
# Every range and consistency check of config values lives here (types are checked above, while
# building): validate_config at load time (the values alone), validate_paths when training starts
# (what must exist on disk), validate_run when the data and the method are known. Each raises a
# one-line ConfigError naming the key.

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
