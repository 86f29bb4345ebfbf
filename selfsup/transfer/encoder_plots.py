"""Pictures of an exported encoder: its first layer's filters and one image's feature maps, as PNG files.

``selfsup plot ENCODER --filters`` and ``selfsup plot ENCODER --features IMAGE`` (both at once work too;
``ENCODER`` is an export or a run directory, whose ``encoder/`` is read). Needs matplotlib
(``pip install 'selfsup[plots]'``). Written to ``--out DIR`` (default ``RUN/plots`` for a run directory):

- ``filters.png``: the first convolution's filters ``[O, I, k, k]``, one tile per output channel (O tiles),
  each scaled to [0, 1] on its own (min-max over its weights, as Krizhevsky et al. 2012, fig. 3, show
  AlexNet's). A CNN's stem convolution; a ViT's patch-embedding projection (its ``k = patch size`` kernels
  are the linear map from a patch to its token, as Dosovitskiy et al. 2021, fig. 7 left, show them).
  RGB tiles when the layer reads 3 channels, grey when it reads 1 (other counts: the mean over them).
- ``features_<i>.png``, one per stage: the image as the encoder sees it, the first ``channels`` maps of
  stage ``i`` (each min-max scaled on its own) and the mean absolute activation over all the stage's
  channels (Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional Networks", look at
  activations per layer). A ResNet's stage outputs are post-ReLU, so that is their channel mean; a
  ViT's tokens leave the final LayerNorm with a channel mean of about 0, so the plain mean would be blank.
  The maps come from :func:`~selfsup.transfer.features.feature_maps`: a CNN's stages after the stem
  (ResNet: layer1..layer4), a ViT's patch-token grids after up to 4 evenly spaced blocks (the last included).
  The image is decoded to RGB, resized (shorter side, centre crop) to the export's input size and
  normalised with its mean and std (``encoder.preprocess``), as the evaluation sees images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import UnidentifiedImageError
from torch import nn

from selfsup.core.errors import ConfigError, DataError, SelfsupError
from selfsup.core.files import writing
from selfsup.data.imagefolder import decode_image
from selfsup.models.vit_patches import has_patch_tokens
from selfsup.runs.export import load_encoder
from selfsup.transfer.features import FeatureMaps, feature_maps

__all__ = [
    "MAX_VIT_BLOCKS",
    "StageMaps",
    "filter_tiles",
    "first_conv",
    "plot_feature_maps",
    "plot_filters",
    "read_image",
    "stage_maps",
    "tile_grid",
    "vit_block_indices",
]

MAX_VIT_BLOCKS = 4  # a ViT's maps: this many evenly spaced blocks at most


def first_conv(encoder: nn.Module) -> nn.Conv2d:
    """The encoder's first ``Conv2d`` in module order: a CNN's stem, a ViT's ``patch_embed.proj``."""
    conv = next((m for m in encoder.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        name = (getattr(encoder, "selfsup_spec", None) or {}).get("name", type(encoder).__name__)
        raise ConfigError(f"{name} has no 2-D convolution whose filters could be drawn")
    return conv


def filter_tiles(encoder: nn.Module) -> np.ndarray:
    """The first convolution's filters as images: float ``[O, k_h, k_w, C]`` in [0, 1], ``C = 3`` when the
    layer reads 3 channels, else 1 (the mean over its input channels). Each filter is min-max scaled on
    its own; a constant filter becomes 0.5 everywhere."""
    w = first_conv(encoder).weight.detach().float().cpu()  # [O, I, k_h, k_w]
    if w.shape[1] != 3:
        w = w.mean(dim=1, keepdim=True)
    return _min_max(w, constant=0.5).permute(0, 2, 3, 1).numpy()


def _min_max(t: torch.Tensor, constant: float) -> torch.Tensor:
    """Each ``t[i]`` of ``[N, ...]`` scaled to [0, 1] on its own; a constant ``t[i]`` becomes ``constant``."""
    flat = t.flatten(1)
    shape = (-1,) + (1,) * (t.dim() - 1)
    low, high = flat.min(dim=1).values.view(shape), flat.max(dim=1).values.view(shape)
    span = high - low
    return torch.where(span > 0, (t - low) / span.clamp_min(1e-12), torch.full_like(t, constant))


def tile_grid(tiles: np.ndarray, columns: int | None = None, pad: int = 1, fill: float = 1.0) -> np.ndarray:
    """Tiles ``[N, h, w, C]`` (or ``[N, h, w]``) laid out row by row: ``[R(h + pad) - pad, K(w + pad) - pad, C]``
    with ``K = columns`` (default ``ceil(sqrt(N))``) and ``R = ceil(N / K)``; gaps and empty cells hold ``fill``.
    Tile ``n`` sits at row ``n // K``, column ``n % K``."""
    tiles = np.asarray(tiles, dtype=np.float32)
    if tiles.ndim == 3:
        tiles = tiles[..., None]
    n, h, w, c = tiles.shape
    k = columns or max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / k))
    grid = np.full((rows * (h + pad) - pad, k * (w + pad) - pad, c), fill, dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, k)
        grid[r * (h + pad): r * (h + pad) + h, col * (w + pad): col * (w + pad) + w] = tiles[i]
    return grid


def read_image(path: str | Path, encoder: nn.Module) -> torch.Tensor:
    """One image file -> the encoder's normalised input ``[1, C, H, W]``: decoded to RGB, resized to the
    export's input size (shorter side, centre crop when it is square; else straight to H x W), averaged to
    one channel for a grey encoder, then ``(x - mean) / std`` with ``encoder.preprocess``."""
    preprocess = encoder.preprocess
    channels, height, width = preprocess.input_size
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"image not found: {path}")
    try:
        rgb = decode_image(str(path), height if height == width else None)  # [H, W, 3] uint8
    except (OSError, ValueError) as exc:
        reason = "not an image" if isinstance(exc, UnidentifiedImageError) else \
            (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"cannot read image {path}: {reason}") from exc
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div(255.0)
    if channels == 1:
        x = x.mean(dim=1, keepdim=True)
    elif channels != 3:
        raise ConfigError(f"images reach encoders reading 1 or 3 channels; this one reads {channels}")
    with torch.no_grad():
        return preprocess(x)


@dataclass
class StageMaps:
    """One stage's maps for one image: ``tiles`` ``[n, h, w]`` (its first n channels, each min-max scaled to
    [0, 1]), ``mean`` ``[h, w]`` (the mean of ``|map|`` over all ``channels``, unscaled), its ``stride`` and
    ``index``."""

    index: int
    stride: int
    channels: int
    tiles: np.ndarray
    mean: np.ndarray


def vit_block_indices(maps_encoder: nn.Module) -> list[int] | None:
    """Up to :data:`MAX_VIT_BLOCKS` evenly spaced block indices ending at the last block (None: a CNN)."""
    if not has_patch_tokens(maps_encoder):
        return None
    depth = len(maps_encoder.feature_info)
    k = min(MAX_VIT_BLOCKS, depth)
    return [(i + 1) * depth // k - 1 for i in range(k)]  # depth 12: blocks 2, 5, 8, 11


def stage_maps(maps: FeatureMaps, x: torch.Tensor, channels: int = 16) -> list[StageMaps]:
    """The maps of ``x`` ``[1, C, H, W]`` at every stage of ``maps``, finest first."""
    if channels < 1:
        raise ConfigError(f"--channels must be at least 1, got {channels}")
    with torch.no_grad():
        out = maps(x)
    stages = []
    for index, stride, total, t in zip(maps.indices, maps.strides, maps.channels, out.values()):
        t = t[0].float().cpu()  # [C_i, h, w]
        tiles = _min_max(t[:channels], constant=0.0)  # a dead (all-zero) channel stays dark
        stages.append(StageMaps(index, stride, total, tiles.numpy(), t.abs().mean(dim=0).numpy()))
    return stages


def _out_dir(path: Path, out: str | Path | None) -> Path:
    """``out``, or ``RUN/plots`` when ``path`` is a run directory (an export's own folder stays untouched)."""
    if out is not None:
        return Path(out).expanduser()
    if (path / "config.yaml").is_file() and not (path / "config.json").is_file():
        return path / "plots"
    raise ConfigError(f"{path} is an exported encoder: say where the pictures go with --out DIR")


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SelfsupError("plots need matplotlib: pip install 'selfsup[plots]'") from None


def _save(fig, path: Path) -> Path:
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    return path


def plot_filters(encoder_path: str | Path, out: str | Path | None = None) -> Path:
    """Write ``filters.png`` (module docstring) for the export or run at ``encoder_path``; returns its path."""
    _require_matplotlib()
    from matplotlib import colormaps
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    path = Path(encoder_path).expanduser()
    encoder = load_encoder(path)
    target = _out_dir(path, out) / "filters.png"
    conv, tiles = first_conv(encoder), filter_tiles(encoder)
    rgb = tiles.shape[-1] == 3
    grid = tile_grid(tiles, pad=1, fill=1.0 if rgb else np.nan)  # grey tiles: coloured gaps, white is a value
    fig = Figure(figsize=(6, 6 * grid.shape[0] / grid.shape[1] + 0.6), layout="constrained")
    ax = fig.subplots()
    grey = colormaps["gray"].with_extremes(bad="#7fa7d4")
    ax.imshow(grid if rgb else grid[..., 0], cmap=grey, vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    o, i, kh, kw = conv.weight.shape
    fig.suptitle(f"first layer: {o} filters of {i} x {kh} x {kw} (each scaled to [0, 1])")
    return _save(fig, target)


def plot_feature_maps(encoder_path: str | Path, image: str | Path, out: str | Path | None = None,
                      channels: int = 16) -> list[Path]:
    """Write ``features_<i>.png`` per stage (module docstring) for one image; returns the paths."""
    _require_matplotlib()
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    cmap = colormaps["viridis"].with_extremes(bad="white")  # the grid's gaps (NaN) stay white
    path = Path(encoder_path).expanduser()
    encoder = load_encoder(path)
    maps = feature_maps(encoder, vit_block_indices(encoder))
    x = read_image(image, encoder)
    target = _out_dir(path, out)
    shown = _shown_image(x, encoder)
    written = []
    for i, stage in enumerate(stage_maps(maps, x, channels)):
        fig = Figure(figsize=(12, 4.2), layout="constrained")
        left, middle, right = fig.subplots(1, 3, width_ratios=[1, 1.4, 1])
        left.imshow(shown if shown.shape[-1] == 3 else shown[..., 0], cmap="gray", vmin=0, vmax=1)
        left.set_title("input")
        middle.imshow(tile_grid(stage.tiles, pad=1, fill=np.nan)[..., 0], cmap=cmap, vmin=0, vmax=1,
                      interpolation="nearest")
        middle.set_title(f"first {len(stage.tiles)} of {stage.channels} channels")
        image_ = right.imshow(stage.mean, cmap=cmap, interpolation="nearest")
        right.set_title("mean |activation| over channels")
        fig.colorbar(image_, ax=right, shrink=0.8)
        for ax in (left, middle, right):
            ax.set_axis_off()
        what = "block" if maps.vit else "feature_info"
        fig.suptitle(f"stage {i} ({what} {stage.index}): stride {stage.stride}, {stage.mean.shape[0]} x "
                     f"{stage.mean.shape[1]} map")
        written.append(_save(fig, target / f"features_{i}.png"))
    return written


def _shown_image(x: torch.Tensor, encoder: nn.Module) -> np.ndarray:
    """The normalised input ``[1, C, H, W]`` back in [0, 1] as ``[H, W, C]`` (what the encoder sees)."""
    p = encoder.preprocess
    return (x * p.std + p.mean).clamp(0, 1)[0].permute(1, 2, 0).numpy()
