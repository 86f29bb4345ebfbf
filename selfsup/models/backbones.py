"""Backbone factory: timm models as headless encoders, with an optional small-image stem.

Every backbone follows timm's contract: ``create_model(name, num_classes=0)`` gives a module
whose forward maps float ``[B, in_chans, H, W]`` to pooled features ``[B, num_features]``.
``small_stem=True`` swaps a ResNet-family stem for the CIFAR variant used by SimCLR
(Chen et al. 2020, appendix B.9): a 3x3 stride-1 first convolution and no stem max-pool,
so a 32-px input keeps its 32-px resolution after the stem.

Sequence backbones (``lstm``, ``gru``, ``seq_transformer``; :mod:`selfsup.models.sequence_backbones`) come through
the same factory and keep the same contract; they read an image as a sequence of rows or patches
and need the input's ``img_size`` (``selfsup train`` fills it in from the data).
"""

from __future__ import annotations

import difflib
import fnmatch
from typing import Any

import timm
from torch import nn

from selfsup.core.errors import ConfigError
from selfsup.models.sequence_backbones import SEQUENCE_BACKBONES
from selfsup.models.vit_patches import add_patch_api

__all__ = ["create_backbone", "list_backbones", "apply_small_stem", "is_sequence_backbone", "default_model_args",
           "reset_to_torch_defaults"]

_SMALL_STEM_HELP = "supported: ResNet-family timm models with conv1 + maxpool, e.g. resnet18, resnet50, resnet10t"


def list_backbones(pattern: str = "*") -> list[str]:
    """Return the sequence-backbone and timm model names matching ``pattern`` (fnmatch-style, e.g. ``"resnet*"``)."""
    return fnmatch.filter(SEQUENCE_BACKBONES.names(), pattern) + list(timm.list_models(pattern))


def is_sequence_backbone(name: str) -> bool:
    """True for the names of :mod:`selfsup.models.sequence_backbones` (``lstm``, ``gru``, ``seq_transformer``)."""
    return name in SEQUENCE_BACKBONES


def default_model_args(name: str, input_hw: tuple[int, int]) -> dict[str, Any]:
    """Model arguments a backbone needs from the data: a sequence backbone's ``img_size`` (H, W)."""
    return {"img_size": [int(v) for v in input_hw]} if is_sequence_backbone(name) else {}


def _check_known(name: str) -> None:
    """Raise :class:`ConfigError` naming close timm names when ``name`` is no timm model.

    Names with a source prefix (``hf-hub:...``, ``local-dir:...``) are left to timm.
    """
    if ":" in name or timm.is_model(name) or is_sequence_backbone(name):
        return
    arch = name.split(".", 1)[0]
    close = difflib.get_close_matches(arch, SEQUENCE_BACKBONES.names() + timm.list_models(), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `selfsup list` for backbones"
    raise ConfigError(f"unknown backbone {name!r}{hint}")


def _first_conv(stem: nn.Sequential) -> tuple[nn.Module, str, nn.Conv2d] | None:
    """Locate the first convolution of a deep stem: ``(parent, attribute name, conv)`` or ``None``."""
    for child_name, child in stem.named_children():
        if isinstance(child, nn.Conv2d):
            return stem, child_name, child
    return None


def apply_small_stem(model: nn.Module, name: str) -> nn.Module:
    """Give a ResNet-family ``model`` a 3x3 stride-1 first conv (no bias) and no stem max-pool.

    Handles timm's plain stem (``conv1`` is a Conv2d) and deep stems (``resnet*t`` / ``resnet*d``:
    ``conv1`` is a Sequential whose first conv is replaced). ``model.feature_info`` follows: the
    reductions become the real ones (resnet18: 1, 1, 2, 4, 8 instead of 2, 4, 8, 16, 32). Modifies and
    returns ``model``.

    Raises:
        ConfigError: ``model`` has no ResNet-style ``conv1`` + ``maxpool`` stem.
    """
    conv1 = getattr(model, "conv1", None)
    unsupported = ConfigError(f"backbone.small_stem is not supported for {name} ({_SMALL_STEM_HELP})")
    if not hasattr(model, "maxpool") or not isinstance(conv1, (nn.Conv2d, nn.Sequential)):
        raise unsupported
    if isinstance(conv1, nn.Conv2d):
        parent, attr, old = model, "conv1", conv1
    else:
        found = _first_conv(conv1)
        if found is None:
            raise unsupported
        parent, attr, old = found
    new = nn.Conv2d(old.in_channels, old.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    setattr(parent, attr, new)
    model.maxpool = nn.Identity()
    _shrink_reductions(model, conv_stride=old.stride[0])
    return model


def _shrink_reductions(model: nn.Module, conv_stride: int) -> None:
    """timm's ``feature_info`` after the small stem: the stem's entry (``act1``) loses the old conv's
    stride, every later one also the max-pool's (the first stage's reduction over the stem's)."""
    info = getattr(model, "feature_info", None)
    if not isinstance(info, list) or not info or not all(isinstance(f, dict) and "reduction" in f for f in info):
        return
    stem, stages = info[0], info[1:]
    pool = stages[0]["reduction"] // stem["reduction"] if stages else 1
    model.feature_info = [{**stem, "reduction": max(1, stem["reduction"] // conv_stride)}] + [
        {**f, "reduction": max(1, f["reduction"] // (conv_stride * pool))} for f in stages]


def create_backbone(
    name: str,
    *,
    small_stem: bool = False,
    pretrained: bool = False,
    in_chans: int = 3,
    **model_args: Any,
) -> nn.Module:
    """Create a headless encoder: a timm model or a sequence backbone.

    Args:
        name: A timm model name (``timm.list_models()``), optionally with a pretrained tag, or
            ``lstm`` / ``gru`` / ``seq_transformer`` (:mod:`selfsup.models.sequence_backbones`).
        small_stem: Use a 3x3 stride-1 stem conv and no max-pool (ResNet family, 32-px data).
        pretrained: Load timm's pretrained weights (needs network access or a local cache).
        in_chans: Number of input channels.
        **model_args: Further keyword arguments for ``timm.create_model`` (e.g. ``drop_path_rate``;
            ``img_size=32, patch_size=4`` for a ViT on 32-px data) or for the sequence backbone
            (``img_size`` is required there; e.g. ``hidden_size``, ``num_layers``, ``bidirectional``).

    Returns:
        A module mapping float ``[B, in_chans, H, W]`` to ``[B, num_features]``; it keeps timm's
        attributes (``num_features``, ``pretrained_cfg``, ``default_cfg``) and gains
        ``selfsup_spec``, the arguments needed to rebuild it (used by :mod:`selfsup.runs.export`);
        a ViT also gains ``forward_patches`` and ``forward_visible`` (:mod:`selfsup.models.vit_patches`).

    Raises:
        ConfigError: Unknown model name, unsupported ``small_stem``, or bad model arguments.
    """
    _check_known(name)
    if is_sequence_backbone(name):
        model = _create_sequence_backbone(name, small_stem, pretrained, in_chans, model_args)
    else:
        try:
            model = timm.create_model(
                name, num_classes=0, pretrained=pretrained, in_chans=in_chans, **model_args
            )
        except TypeError as exc:  # an unknown keyword reaches the model constructor
            raise ConfigError(f"bad backbone arguments for {name} {sorted(model_args)}: {exc}") from exc
        if small_stem:
            apply_small_stem(model, name)
        add_patch_api(model)  # a ViT's forward_patches / forward_visible (selfsup.models.vit_patches)
    model.selfsup_spec = {
        "name": name,
        "small_stem": bool(small_stem),
        "in_chans": int(in_chans),
        "model_args": dict(model_args),
    }
    return model


def _create_sequence_backbone(name: str, small_stem: bool, pretrained: bool, in_chans: int,
                              model_args: dict[str, Any]) -> nn.Module:
    """Build a :mod:`selfsup.models.sequence_backbones` model, turning bad settings into one-line ConfigErrors."""
    if small_stem or pretrained:
        raise ConfigError(f"backbone.small_stem and backbone.pretrained do not apply to the sequence backbone {name}")
    if "img_size" not in model_args:
        raise ConfigError(f"backbone {name} needs backbone.model_args.img_size (the input's H or [H, W])")
    try:
        return SEQUENCE_BACKBONES.get(name)(in_chans=in_chans, **model_args)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad backbone arguments for {name} {sorted(model_args)}: {exc}") from exc


def reset_to_torch_defaults(model: nn.Module) -> nn.Module:
    """Re-initialise ``model`` in place with PyTorch's own ``reset_parameters()`` on every module; returns it.

    timm's ResNets zero-initialise the last BatchNorm of every residual block (``zero_init_last``), so a
    random timm ResNet is nearly the identity and makes a weak random baseline. PyTorch's defaults
    (BatchNorm weight 1 and fresh running statistics, Kaiming-uniform convolutions and linears; what
    torchvision's ResNets do with ``zero_init_residual=False``) give a far stronger one. Modules without
    ``reset_parameters`` keep their weights; draw from the global RNG (seed it first for a fixed copy).
    """
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    return model
