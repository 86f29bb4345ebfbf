"""``backbone.init_from``: start a new run's backbone from trained weights instead of a random init.

To continue pretraining on other data, or to go on after a finished schedule (a finished run cannot
be extended in place: its schedule is part of it), train a new run whose backbone starts from:

- an exported encoder (a folder with ``config.json`` + ``model.safetensors``, or that
  ``model.safetensors`` itself);
- a run directory: its ``encoder/`` when the run finished, else its newest checkpoint;
- a checkpoint file (``RUN/checkpoints/step-XXXXXXXX.pt``): the weights of the encoder the run
  exports (the EMA teacher for DINO, the backbone otherwise), loaded with ``weights_only=True``.

The weights load strictly: another architecture or stem, a missing or an extra tensor, or a shape
that differs is a one-line :class:`~selfsup.core.errors.CheckpointError`; a missing path a
:class:`~selfsup.core.errors.ConfigError`. Only the backbone is initialised (heads, teacher copies
made from it, optimizer and schedule start fresh). The file read and its sha256 are recorded in the
run's config (``backbone.init_from``, ``backbone.init_sha256``), hence in ``config.yaml`` and in the
export's ``config.json`` (``selfsup.recipe.backbone``); a given ``backbone.init_sha256`` must match.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from selfsup.config import BackboneConfig
from selfsup.core.errors import CheckpointError, ConfigError
from selfsup.engine.checkpoint import list_checkpoints, load_checkpoint

EXPORT_WEIGHTS, EXPORT_CONFIG = "model.safetensors", "config.json"  # selfsup.runs.export's file names


def init_weights_file(path: str | Path) -> Path:
    """The file ``backbone.init_from=path`` reads (absolute): an export's ``model.safetensors``, or a checkpoint."""
    given = Path(path).expanduser()
    if not given.exists():
        raise ConfigError(f"backbone.init_from={given} does not exist: give an exported encoder, a run directory "
                          "or a checkpoint file")
    if given.is_file():
        return given.resolve()
    for export in (given, given / "encoder"):
        if (export / EXPORT_CONFIG).is_file() and (export / EXPORT_WEIGHTS).is_file():
            return (export / EXPORT_WEIGHTS).resolve()
    checkpoints = list_checkpoints(given / "checkpoints")
    if checkpoints:
        return checkpoints[-1].resolve()
    raise ConfigError(f"backbone.init_from={given} is a folder without an encoder export (config.json + "
                      "model.safetensors), encoder/ or checkpoints/")


def sha256_of(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_init_weights(backbone: nn.Module, cfg: BackboneConfig) -> tuple[str, str]:
    """Load the weights ``cfg.init_from`` names into ``backbone`` (made by ``create_backbone``), strictly;
    returns ``(file read, its sha256)`` for the run's config."""
    if cfg.pretrained:
        raise ConfigError("backbone.init_from and backbone.pretrained=true both set the initial weights; choose one")
    file = init_weights_file(cfg.init_from)
    digest = sha256_of(file)
    if cfg.init_sha256 and cfg.init_sha256.lower() != digest:
        raise CheckpointError(f"backbone.init_from={file} has sha256 {digest}, not backbone.init_sha256="
                              f"{cfg.init_sha256}: the weights there changed")
    state, arch, small_stem = _read_export(file) if file.suffix == ".safetensors" else _read_checkpoint(file)
    _check_architecture(backbone, file, arch, small_stem)
    _load_strictly(backbone, state, file)
    return str(file), digest


def _read_export(file: Path) -> tuple[dict[str, torch.Tensor], str | None, bool | None]:
    """An export's weights, and the architecture and stem its config.json names (None: no config.json)."""
    try:
        state = safetensors.torch.load_file(str(file), device="cpu")
    except Exception as err:  # safetensors has its own error types for a corrupt file
        raise CheckpointError(f"backbone.init_from={file} is no readable safetensors file ({err})") from None
    config_file = file.parent / EXPORT_CONFIG
    if not config_file.is_file():
        return state, None, None
    try:
        config = json.loads(config_file.read_text())
    except ValueError as err:
        raise CheckpointError(f"backbone.init_from: unreadable {config_file} ({err})") from None
    model_args, block = config.get("model_args") or {}, config.get("selfsup") or {}
    small_stem = bool(model_args.get("selfsup_small_stem") or block.get("small_stem"))
    return state, config.get("architecture"), small_stem


def _read_checkpoint(file: Path) -> tuple[dict[str, torch.Tensor], str | None, bool | None]:
    """The exported encoder's weights in a training checkpoint (its ``meta.encoder`` prefix, else ``backbone``)."""
    state = load_checkpoint(file)
    meta = state.get("meta") or {}
    prefix = f"{meta.get('encoder') or 'backbone'}."
    weights = {key[len(prefix):]: value for key, value in state["model"].items() if key.startswith(prefix)}
    if not weights:
        raise CheckpointError(f"backbone.init_from={file} holds no {prefix[:-1]} weights")
    return weights, meta.get("backbone"), meta.get("small_stem")


def _arch(name: str) -> str:
    return name.split(".", 1)[0]


def _check_architecture(backbone: nn.Module, file: Path, arch: str | None, small_stem: bool | None) -> None:
    spec = getattr(backbone, "selfsup_spec", {})
    mine, my_stem = str(spec.get("name", "")), bool(spec.get("small_stem", False))
    same_arch = arch is None or ":" in mine or ":" in arch or _arch(arch) == _arch(mine)
    if not same_arch or (small_stem is not None and small_stem != my_stem):
        stem = {True: " with the small stem", False: " with the standard stem", None: ""}
        raise CheckpointError(f"backbone.init_from={file} holds a {arch} encoder{stem[small_stem]}, this run builds "
                              f"{mine}{stem[my_stem]}: set backbone.name and backbone.small_stem to match it")


def _load_strictly(backbone: nn.Module, state: dict[str, torch.Tensor], file: Path) -> None:
    name = getattr(backbone, "selfsup_spec", {}).get("name", type(backbone).__name__)
    mine = backbone.state_dict()
    missing, extra = sorted(mine.keys() - state.keys()), sorted(state.keys() - mine.keys())
    shapes = [f"{key} is {list(state[key].shape)} there, {list(mine[key].shape)} here"
              for key in mine if key in state and state[key].shape != mine[key].shape]
    problems = ([f"missing {', '.join(missing[:3])}"] if missing else []) + \
               ([f"unexpected {', '.join(extra[:3])}"] if extra else []) + shapes[:2]
    if problems:
        raise CheckpointError(f"the weights in backbone.init_from={file} do not fit backbone {name} "
                              f"({'; '.join(problems)})")
    backbone.load_state_dict(state, strict=True)
