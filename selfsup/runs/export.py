"""Encoder export and reload in timm's local-folder format.

An export directory holds ``model.safetensors`` (the encoder's state dict) and ``config.json``::

    {"architecture": "resnet18", "num_classes": 0, "num_features": 512,
     "model_args": {"in_chans": 3, ...},
     "pretrained_cfg": {"mean": [...], "std": [...], "input_size": [3, 32, 32], "num_classes": 0, ...},
     "selfsup": {"small_stem": false, "method": "simclr", "recipe": {...}, "format_version": 1}}

timm reads ``architecture``, ``num_classes``, ``model_args`` and ``pretrained_cfg`` (``num_features``
is informational), so ``timm.create_model("local-dir:" + path, pretrained=True)`` rebuilds an
unchanged timm architecture. :func:`load_encoder` rebuilds every export, small stem included.

A small-stem export is not timm's architecture: for deep-stem models (``resnet10t``) its weights
even have timm's shapes and would load silently into a stride-2 stem, and no timm argument makes a
stride-1 stem. So its ``model_args`` also hold ``"selfsup_small_stem__load_with_selfsup_load_encoder":
true``: timm's constructor refuses it with a message that says what to do (``TypeError: ResNet.__init__()
got an unexpected keyword argument 'selfsup_small_stem__load_with_selfsup_load_encoder'``), and
:func:`load_encoder` consumes it (and the ``selfsup_small_stem`` of exports made before).
"""

from __future__ import annotations

import json
import math
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from selfsup.models.backbones import create_backbone
from selfsup.core.errors import CheckpointError, ConfigError
from selfsup.core.files import apply_umask, reading, writing

__all__ = [
    "export_encoder", "export_as", "load_encoder", "Preprocess", "FORMAT_VERSION", "FORMATS", "WEIGHTS_NAME",
    "CONFIG_NAME", "TORCHSCRIPT_NAME", "ONNX_NAME",
]

FORMAT_VERSION = 1
SMALL_STEM_ARG = "selfsup_small_stem__load_with_selfsup_load_encoder"  # timm's TypeError shows this name
LEGACY_SMALL_STEM_ARGS = ("selfsup_small_stem",)  # the same flag in older exports
RUN_ENCODER_DIR = "encoder"  # a run directory's export (selfsup.runs.train writes it)
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
TORCHSCRIPT_NAME = "encoder.pt"
ONNX_NAME = "encoder.onnx"
FORMATS = ("safetensors", "torchscript", "onnx")

# pretrained_cfg keys describing timm's own weights (where and under which terms they came from),
# or test-time settings for them; they are wrong for a re-trained encoder and are dropped.
_SOURCE_KEYS = (
    "url", "hf_hub_id", "hf_hub_filename", "hf_hub_revision", "file", "source", "state_dict",
    "tag", "license", "origin_url", "paper_ids", "paper_name", "notes", "description",
    "test_input_size", "test_crop_pct", "test_pool_size", "label_names", "label_descriptions",
    "label_offset",
)


def _architecture(encoder: nn.Module, spec: dict[str, Any]) -> str:
    """The timm architecture name (no pretrained tag, no source prefix) of ``encoder``."""
    name = str(spec["name"])
    if ":" in name:  # hf-hub:/local-dir: source; timm records the real architecture
        return str(getattr(encoder, "pretrained_cfg", {}).get("architecture", name))
    return name.split(".", 1)[0]


def _floats(values: Sequence[float], what: str, channels: int) -> list[float]:
    """Validate a per-channel normalisation vector and return it as plain floats."""
    out = [float(v) for v in torch.as_tensor(values, dtype=torch.float64).flatten().tolist()]
    if len(out) != channels or not all(math.isfinite(v) for v in out):
        raise ConfigError(f"export {what} must hold {channels} finite numbers, got {out}")
    return out


def _pretrained_cfg(
    encoder: nn.Module,
    arch: str,
    mean: list[float],
    std: list[float],
    input_size: tuple[int, int, int],
    crop_pct: float | None,
) -> dict[str, Any]:
    """timm's pretrained_cfg of ``encoder`` minus source keys, with this export's preprocessing."""
    cfg = {k: v for k, v in dict(getattr(encoder, "pretrained_cfg", None) or {}).items() if k not in _SOURCE_KEYS}
    cfg.update(
        architecture=arch,
        custom_load=False,
        mean=mean,
        std=std,
        input_size=list(input_size),
        num_classes=0,
        pool_size=None,  # depends on input size and stem; not needed by a headless encoder
    )
    if crop_pct is not None:
        if not 0.0 < float(crop_pct) <= 1.0:
            raise ConfigError(f"export crop_pct must be in (0, 1], got {crop_pct}")
        cfg["crop_pct"] = float(crop_pct)
    return cfg


def _build_config(
    encoder: nn.Module,
    mean: Sequence[float],
    std: Sequence[float],
    input_size: tuple[int, int, int],
    method: str | None,
    recipe: dict | None,
    crop_pct: float | None,
) -> dict[str, Any]:
    """Assemble config.json for ``encoder`` (see the module docstring)."""
    spec = getattr(encoder, "selfsup_spec", None)
    if not isinstance(spec, dict):
        raise ConfigError("export needs an encoder made by selfsup.create_backbone (no selfsup_spec attribute)")
    in_chans = int(spec.get("in_chans", 3))
    size = tuple(int(v) for v in input_size)
    if len(size) != 3 or size[0] != in_chans or min(size) < 1:
        raise ConfigError(f"export input_size must be (C, H, W) with C={in_chans}, got {tuple(input_size)}")
    small_stem = bool(spec.get("small_stem", False))
    model_args = {"in_chans": in_chans, **spec.get("model_args", {})}
    if small_stem:
        model_args[SMALL_STEM_ARG] = True  # makes timm refuse it instead of loading a different stem
    try:
        json.dumps(model_args)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"backbone model_args are not JSON-serialisable: {model_args!r}") from exc
    arch = _architecture(encoder, spec)
    return {
        "architecture": arch,
        "num_classes": 0,
        "num_features": int(getattr(encoder, "num_features")),
        "model_args": model_args,
        "pretrained_cfg": _pretrained_cfg(
            encoder, arch, _floats(mean, "mean", in_chans), _floats(std, "std", in_chans), size, crop_pct
        ),
        "selfsup": {
            "small_stem": small_stem,
            "method": method,
            "recipe": json.loads(json.dumps(recipe, default=str)) if recipe is not None else None,
            "format_version": FORMAT_VERSION,
        },
    }


def _cpu_state_dict(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as contiguous CPU tensors, each with its own storage (no shared tensors)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in encoder.state_dict().items()}


def _write_atomically(out_dir: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` on a fresh directory beside ``out_dir``, then move it to ``out_dir``.

    An existing export at ``out_dir`` is replaced; a directory holding anything else is refused,
    so a mistyped path never deletes unrelated files.
    """
    with writing(out_dir):
        _replace_dir(out_dir, write)


def _replace_dir(out_dir: Path, write: Callable[[Path], None]) -> None:
    """:func:`_write_atomically`'s body; its files get the umask's mode (safetensors writes ``0600``)."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ConfigError(f"export path {out_dir} exists and is not a directory")
        ours = (WEIGHTS_NAME, CONFIG_NAME, TORCHSCRIPT_NAME, ONNX_NAME)
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in ours)
        if foreign:
            listed = ", ".join(foreign[:3])
            raise ConfigError(f"export path {out_dir} holds other files ({listed}); refusing to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{tag}"
    old = out_dir.parent / f".{out_dir.name}.old-{tag}"
    tmp.mkdir()
    try:
        write(tmp)
        apply_umask(tmp)
        if out_dir.exists():
            out_dir.rename(old)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out_dir.exists():
            old.rename(out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def export_encoder(
    encoder: nn.Module,
    out_dir: str | Path,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    input_size: tuple[int, int, int],
    method: str | None = None,
    recipe: dict | None = None,
    crop_pct: float | None = None,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``encoder`` to ``out_dir`` as ``model.safetensors`` + ``config.json`` (timm local-folder format).

    Args:
        encoder: A module from :func:`selfsup.create_backbone` (it carries ``selfsup_spec``);
            a ``torch.compile`` wrapper is unwrapped.
        out_dir: Target directory; an existing export there is replaced atomically.
        mean, std: Per-channel input normalisation used in training (pixel values in [0, 1]).
        input_size: ``(C, H, W)`` the encoder was trained at.
        method: The SSL method name, recorded in the ``selfsup`` block.
        recipe: The resolved training config, recorded in the ``selfsup`` block (JSON, ``str`` fallback).
        crop_pct: Centre-crop fraction for timm's eval transform (default: timm's value for the
            architecture; 1.0 means resize only, usual for 32-px data).
        extra: ``extra(tmp_dir)`` writes further files into the export before it replaces ``out_dir``
            (see :func:`export_as`); if it raises, nothing is replaced.

    Returns:
        The export directory.
    """
    encoder = getattr(encoder, "_orig_mod", encoder)
    out_dir = Path(out_dir)
    config = _build_config(encoder, mean, std, input_size, method, recipe, crop_pct)
    tensors = _cpu_state_dict(encoder)

    def write(tmp: Path) -> None:
        safetensors.torch.save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        if extra is not None:
            extra(tmp)

    _write_atomically(out_dir, write)
    return out_dir


def _read_config(path: Path) -> dict[str, Any]:
    """Read and sanity-check ``path/config.json``."""
    with reading(path):
        if not path.is_dir():
            raise CheckpointError(f"encoder directory not found: {path}")
    for name in (CONFIG_NAME, WEIGHTS_NAME):  # another user's file: "cannot read PATH: permission denied"
        with reading(path / name):
            if not (path / name).is_file():
                raise CheckpointError(f"encoder export {path} has no {name}")
            open(path / name, "rb").close()
    try:
        config = json.loads((path / CONFIG_NAME).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"unreadable {path / CONFIG_NAME}: {exc}") from exc
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise CheckpointError(f"{path / CONFIG_NAME} has no 'architecture' entry")
    version = (config.get("selfsup") or {}).get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has export format {version}; this selfsup reads up to {FORMAT_VERSION}")
    return config


def _load_weights(model: nn.Module, file: Path) -> None:
    """Load ``file`` into ``model`` strictly, turning every mismatch into a CheckpointError."""
    try:
        state = safetensors.torch.load_file(str(file), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"unreadable weights {file}: {exc}") from exc
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = str(exc).strip().splitlines()[-1].strip()
        raise CheckpointError(f"weights in {file} do not fit the architecture: {first}") from exc
    problems = []
    if result.missing_keys:
        problems.append(f"missing keys {result.missing_keys[:5]}")
    if result.unexpected_keys:
        problems.append(f"unexpected keys {result.unexpected_keys[:5]}")
    if problems:
        raise CheckpointError(f"weights in {file} do not match the architecture: {'; '.join(problems)}")


class Preprocess(nn.Module):
    """An export's evaluation transform: uint8 (or [0, 1] float) images -> the encoder's normalised input.

    ``forward(x)``: x uint8 ``[B, C, H, W]`` is divided by 255 (float input is used as it is, as
    non-image data are), resized to the recorded ``input_size`` when its H x W differ (bilinear,
    antialiased when shrinking, as torchvision's ``Resize`` on tensors and
    :func:`selfsup.evaluation.extract_features`), then normalised with ``(x - mean) / std``.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], input_size: Sequence[int]):
        super().__init__()
        channels = len(mean)
        std_t = torch.as_tensor(std, dtype=torch.float32)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, channels, 1, 1))
        self.register_buffer("std", torch.where(std_t > 0, std_t, torch.ones_like(std_t)).view(1, channels, 1, 1))
        self.input_size = tuple(int(v) for v in input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div(255.0) if not x.is_floating_point() else x.float()
        size = self.input_size[1:]
        if tuple(x.shape[-2:]) != size:
            shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
            x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False,
                                                antialias=shrinking)
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def load_encoder(path: str | Path, *, with_preprocess: bool = False):
    """Rebuild an exported encoder (small stem included) and load its weights.

    Args:
        path: an export directory (``model.safetensors`` + ``config.json``), or a run directory, whose
            export ``RUN/encoder`` is loaded.
        with_preprocess: also return the export's :class:`Preprocess` (its recorded input size,
            mean and std), so that ``encoder(preprocess(uint8_images))`` gives the features.

    Returns:
        The encoder in eval mode, with ``pretrained_cfg`` / ``default_cfg`` from config.json,
        ``selfsup_spec`` set (so it can be exported again) and ``preprocess`` (the
        :class:`Preprocess`, kept out of the state dict); ``(encoder, preprocess)`` when
        ``with_preprocess``.

    Raises:
        CheckpointError: Missing directory or files, unreadable or mismatched weights.
    """
    path = _export_dir(Path(path).expanduser())
    config = _read_config(path)
    model_args = dict(config.get("model_args") or {})
    in_chans = int(model_args.pop("in_chans", 3))
    small_stem = any([bool(model_args.pop(key, False)) for key in (SMALL_STEM_ARG, *LEGACY_SMALL_STEM_ARGS)])
    small_stem = small_stem or bool((config.get("selfsup") or {}).get("small_stem", False))
    try:
        model = create_backbone(config["architecture"], small_stem=small_stem, in_chans=in_chans, **model_args)
    except ConfigError as exc:
        raise CheckpointError(f"cannot rebuild the encoder in {path}: {exc}") from exc
    _load_weights(model, path / WEIGHTS_NAME)
    pretrained_cfg = dict(config.get("pretrained_cfg") or {})
    pretrained_cfg.setdefault("architecture", config["architecture"])
    model.pretrained_cfg = pretrained_cfg
    model.default_cfg = pretrained_cfg
    preprocess = _preprocess_from(pretrained_cfg, in_chans, path)
    object.__setattr__(model, "preprocess", preprocess)  # an attribute, not a submodule: the state dict stays timm's
    model.eval()
    return (model, preprocess) if with_preprocess else model


def _export_dir(path: Path) -> Path:
    """``path``, or the export inside it when ``path`` is a run directory: ``load_encoder(RUN)`` loads
    ``RUN/encoder``; a run without one raises a one-line CheckpointError saying how to get one."""
    if (path / CONFIG_NAME).is_file() or not (path / "config.yaml").is_file():
        return path
    encoder_dir = path / RUN_ENCODER_DIR
    if (encoder_dir / CONFIG_NAME).is_file():
        return encoder_dir
    raise CheckpointError(f"{path} is a run directory and its encoder is {encoder_dir}, which does not exist yet "
                          f"(the run has not finished): `selfsup export {path} --out DIR` exports its newest checkpoint")


def _preprocess_from(cfg: dict[str, Any], in_chans: int, path: Path) -> Preprocess:
    """The :class:`Preprocess` recorded in ``pretrained_cfg`` (timm's ImageNet defaults are never assumed)."""
    try:
        mean, std = [float(v) for v in cfg["mean"]], [float(v) for v in cfg["std"]]
        size = [int(v) for v in cfg["input_size"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path / CONFIG_NAME}: pretrained_cfg needs mean, std and input_size ({exc})") from exc
    if len(mean) != in_chans or len(std) != in_chans or len(size) != 3:
        raise CheckpointError(f"{path / CONFIG_NAME}: mean/std need {in_chans} values and input_size (C, H, W), "
                              f"got {mean}, {std}, {size}")
    return Preprocess(mean, std, size)


def export_as(encoder: nn.Module, out_dir: str | Path, fmt: str, *, method: str | None = None, recipe: Any = None,
              check_batch: int = 3) -> Path:
    """Export an encoder loaded by :func:`load_encoder` (it carries ``pretrained_cfg``) in ``fmt``.

    Every format writes the timm local-folder export (``model.safetensors`` + ``config.json``),
    so the preprocessing travels with the file; the others add:

    - ``torchscript``: ``encoder.pt``, traced at the recorded input size;
    - ``onnx``: ``encoder.onnx`` (input ``pixels`` [batch, C, H, W], normalised as
      :class:`Preprocess` does; output ``features`` [batch, D]; the batch dimension is dynamic).

    Both are checked before they are kept: on a random input of ``check_batch`` images (a batch
    size other than the one traced), the exported model must reproduce the encoder's outputs
    within 1e-5 (absolute + relative); ONNX is run with onnxruntime when it is installed
    (``pip install 'selfsup[onnx]'``), otherwise only onnx's model checker runs, if present.
    """
    import dataclasses

    if fmt not in FORMATS:
        raise ConfigError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    cfg = encoder.pretrained_cfg
    recipe = dataclasses.asdict(recipe) if dataclasses.is_dataclass(recipe) else recipe
    encoder = getattr(encoder, "_orig_mod", encoder).eval()
    example = torch.rand(2, *cfg["input_size"])
    check = torch.rand(check_batch, *cfg["input_size"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = encoder(check)

    def extra(tmp: Path) -> None:
        if fmt == "torchscript":
            with torch.no_grad():
                traced = torch.jit.trace(encoder, example)
                _check_close(traced(check), expected, "TorchScript")
            traced.save(str(tmp / TORCHSCRIPT_NAME))
        elif fmt == "onnx":
            _export_onnx(encoder, example, tmp / ONNX_NAME)
            _check_onnx(tmp / ONNX_NAME, check, expected)

    return export_encoder(encoder, out_dir, mean=cfg["mean"], std=cfg["std"], input_size=tuple(cfg["input_size"]),
                          method=method, recipe=recipe, crop_pct=cfg.get("crop_pct"), extra=extra)


def _check_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    actual = torch.as_tensor(actual)
    if actual.shape != expected.shape or not torch.allclose(actual, expected, atol=1e-5, rtol=1e-5):
        diff = (actual - expected).abs().max().item() if actual.shape == expected.shape else "shape"
        raise CheckpointError(f"the {what} export does not reproduce the encoder's outputs (max difference {diff})")


def _export_onnx(encoder: nn.Module, example: torch.Tensor, file: Path) -> None:
    """``torch.onnx.export`` with a dynamic batch; the TorchScript-based exporter (no extra dependency),
    or torch.export's when that one is gone (it needs ``onnxscript``)."""
    import warnings

    kwargs = dict(input_names=["pixels"], output_names=["features"], opset_version=17)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings
            torch.onnx.export(encoder, (example,), str(file), dynamo=False,
                              dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}}, **kwargs)
    except (TypeError, NotImplementedError):  # a torch without the TorchScript-based exporter
        torch.onnx.export(encoder, (example,), str(file), dynamo=True,
                          dynamic_shapes=({0: torch.export.Dim("batch")},), **kwargs)


def _check_onnx(file: Path, check: torch.Tensor, expected: torch.Tensor) -> None:
    try:
        import onnxruntime
    except ImportError:
        try:
            import onnx
        except ImportError:
            return
        onnx.checker.check_model(str(file))
        return
    session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    (out,) = session.run(["features"], {"pixels": check.numpy()})
    _check_close(torch.from_numpy(out), expected, "ONNX")
