"""Multi-scale feature maps of any exported encoder, ready for an FPN, a detector or a dense head.

:func:`feature_maps` wraps an encoder (from :func:`selfsup.load_encoder` or
:func:`selfsup.create_backbone`) in a :class:`FeatureMaps` module that maps normalised images
``[B, C, H, W]`` to an ``OrderedDict`` ``{"0": [B, C_0, H / s_0, W / s_0], "1": ...}``, finest first,
and records each map's ``strides`` and ``channels``:

- CNNs (every timm model with ``forward_intermediates``: ResNets, ConvNeXts, EfficientNets, RegNets, ...):
  the outputs of the stages timm lists in ``feature_info`` (default: every stage after the stem, as
  Lin et al. 2017's FPN takes C2-C5), strides and channels read from ``feature_info`` (a small stem's
  strides are the corrected ones);
- ViTs: the patch tokens of one or several blocks (default: the last), after the final norm, reshaped
  to the patch grid: stride = patch size, channels = width (as the linear probes of DINOv2, Oquab et al.
  2023, sec. 7.4, read them).

The wrapped encoder keeps its own parameters (no copy), so an export's weights are used as they are.
:class:`WithFPN` puts torchvision's :class:`~torchvision.ops.FeaturePyramidNetwork` on top (channel list and
names taken from the maps) and has the ``out_channels`` attribute torchvision's detectors read.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from selfsup.core.errors import ConfigError
from selfsup.models.vit_patches import has_patch_tokens, patch_size
from selfsup.runs.export import load_encoder

__all__ = ["FeatureMaps", "WithFPN", "feature_maps", "load_feature_maps"]


class FeatureMaps(nn.Module):
    """An encoder's feature maps: float ``[B, C, H, W]`` -> ``OrderedDict[str, [B, C_i, H / s_i, W / s_i]]``.

    Attributes:
        encoder: the wrapped encoder (its parameters are this module's).
        indices: ``feature_info`` indices (CNN) or block indices (ViT) of the maps, finest first.
        strides: the maps' strides in pixels (``s_i``).
        channels: the maps' channel counts (``C_i``).
        names: the dict's keys, ``"0"``, ``"1"``, ...
        stages: for each map, the encoder's sub-modules that compute it after the previous map (for
            fine-tuning the last k stages).
        in_chans: the encoder's input channels (its first convolution's); RGB images given to a grey
            encoder (digits) are averaged to one channel, grey images given to an RGB encoder repeated.
    """

    def __init__(self, encoder: nn.Module, indices: Sequence[int], strides: Sequence[int],
                 channels: Sequence[int], stages: Sequence[Sequence[str]], vit: bool):
        super().__init__()
        self.encoder = encoder
        self.indices = [int(i) for i in indices]
        self.strides = [int(s) for s in strides]
        self.channels = [int(c) for c in channels]
        self.names = [str(i) for i in range(len(self.indices))]
        self.stages = [list(s) for s in stages]
        self.vit = vit
        first_conv = next((m for m in encoder.modules() if isinstance(m, nn.Conv2d)), None)
        self.in_chans = first_conv.in_channels if first_conv is not None else 3

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        if x.shape[1] != self.in_chans and self.in_chans == 1:
            x = x.mean(dim=1, keepdim=True)  # RGB scenes into a grey encoder
        elif x.shape[1] == 1 and self.in_chans != 1:
            x = x.expand(-1, self.in_chans, -1, -1)
        if self.vit:
            maps = self.encoder.forward_intermediates(x, indices=self.indices, norm=True, output_fmt="NCHW",
                                                      intermediates_only=True)
        else:
            maps = self.encoder.forward_intermediates(x, indices=self.indices, intermediates_only=True)
        return OrderedDict(zip(self.names, maps))

    def stage_modules(self, last: int) -> list[nn.Module]:
        """The encoder's sub-modules computing the last ``last`` maps (and, for a ViT, its final norm)."""
        names = [n for stage in self.stages[len(self.stages) - last:] for n in stage] if last > 0 else []
        modules = dict(self.encoder.named_modules())
        return [modules[n] for n in names if n in modules]

    def extra_repr(self) -> str:
        return f"strides={self.strides}, channels={self.channels}"


def feature_maps(encoder: nn.Module, indices: Sequence[int] | None = None) -> FeatureMaps:
    """Wrap ``encoder`` as :class:`FeatureMaps`.

    Args:
        encoder: a timm CNN with ``forward_intermediates`` and ``feature_info``, or a timm ViT.
        indices: CNN: ``feature_info`` indices (default: every stage after the stem, e.g. resnet18's
            ``layer1..layer4``); ViT: block indices, negative from the end (default: ``[-1]``).

    Raises:
        ConfigError: an encoder without intermediate outputs (a sequence backbone) or a bad index.
    """
    name = (getattr(encoder, "selfsup_spec", None) or {}).get("name", type(encoder).__name__)
    info = getattr(encoder, "feature_info", None)
    if not hasattr(encoder, "forward_intermediates") or not isinstance(info, list) or not info:
        raise ConfigError(f"dense transfer needs a timm CNN or ViT with forward_intermediates, not {name}")
    vit = has_patch_tokens(encoder)
    count = len(info)
    if indices is None:
        indices = [-1] if vit else list(range(1, count)) if count > 1 else [0]
    resolved = []
    for i in indices:
        j = int(i) + count if int(i) < 0 else int(i)
        if not 0 <= j < count:
            raise ConfigError(f"feature index {i} out of range for {name} ({count} stages/blocks)")
        resolved.append(j)
    if resolved != sorted(set(resolved)):
        raise ConfigError(f"feature indices must be distinct and increasing, got {list(indices)}")
    if vit:
        p = patch_size(encoder)[0]
        strides = [p] * len(resolved)
        stages = _stage_names(info, resolved)
        stages[-1] = stages[-1] + ["norm"]
    else:
        strides = [int(info[j]["reduction"]) for j in resolved]
        stages = _stage_names(info, resolved)
    return FeatureMaps(encoder, resolved, strides, [int(info[j]["num_chs"]) for j in resolved], stages, vit)


def _stage_names(info: list[dict], indices: list[int]) -> list[list[str]]:
    """For each chosen index, the ``feature_info`` modules after the previous chosen one up to it."""
    stages, start = [], 0
    for j in indices:
        stages.append([str(info[k]["module"]) for k in range(start, j + 1)])
        start = j + 1
    return stages


def load_feature_maps(path: str | Path, indices: Sequence[int] | None = None) -> FeatureMaps:
    """:func:`selfsup.load_encoder` then :func:`feature_maps`; the export's ``preprocess`` stays reachable as
    ``maps.encoder.preprocess`` (mean and std for the detector's normalisation)."""
    return feature_maps(load_encoder(path), indices)


class WithFPN(nn.Module):
    """:class:`FeatureMaps` + torchvision's FPN (Lin et al. 2017): ``[B, C, H, W]`` ->
    ``OrderedDict`` of ``[B, out_channels, H / s, W / s]`` maps, one per input map plus ``"pool"``
    (stride ``2 * s_last``, as torchvision's ``BackboneWithFPN``).

    Attributes:
        out_channels: the FPN's width (torchvision's detectors read it).
        strides: the output maps' strides, ``"pool"`` included.
    """

    def __init__(self, maps: FeatureMaps, out_channels: int = 256):
        super().__init__()
        self.body = maps
        self.fpn = FeaturePyramidNetwork(maps.channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = int(out_channels)
        self.strides = list(maps.strides) + [2 * maps.strides[-1]]
        self.names = list(maps.names) + ["pool"]

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        return self.fpn(self.body(x))
