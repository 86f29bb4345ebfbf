"""Batched, on-device image augmentation with per-sample random parameters.

Every op takes a whole batch of float images ``[B, C, H, W]`` in ``[0, 1]`` (``C`` = 1 or 3)
and per-sample parameters (tensors of shape ``[B]``), so one call augments the batch with no
per-sample Python loop. Random parameters come only from an explicit ``torch.Generator`` on
the images' device, so a fixed seed reproduces the views exactly on that device.

The recipe is SimCLR's (Chen et al. 2020, "A Simple Framework for Contrastive Learning of
Visual Representations", appendix A); BYOL's solarisation (Grill et al. 2020, "Bootstrap Your
Own Latent") and DINO's multi-crop (Caron et al. 2021, "Emerging Properties in Self-Supervised
Vision Transformers") are expressed through :class:`AugmentSpec`. Each op follows the
definition of the torchvision functional op of the same name; the tests compare them.

Plain torch, not kornia (on PyPI, similar ops): kornia 0.9.0's equivalent SimCLR pipeline took
3.7x as long on CPU (eval/results/speed-cpu-2026-11-21.md), and it would be a dependency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.core.errors import ConfigError, DataError

__all__ = [
    "AugmentSpec", "ViewMaker", "sample_crop_boxes", "resized_crop", "hflip",
    "adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue",
    "sample_jitter_params", "apply_color_jitter", "color_jitter", "rgb_to_gray", "grayscale",
    "blur_kernel_size", "gaussian_blur", "solarize", "normalize",
]

_LUMA = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma weights (as torchvision's rgb_to_grayscale)
_JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


def _uniform(shape: int | tuple[int, ...], low: float, high: float,
             generator: torch.Generator) -> Tensor:
    """Uniform samples in ``[low, high)`` of ``shape``, on the generator's device."""
    return torch.rand(shape, generator=generator, device=generator.device) * (high - low) + low


def _bernoulli(batch: int, p: float, generator: torch.Generator) -> Tensor:
    """Bool ``[batch]``: True with probability ``p``, on the generator's device."""
    return torch.rand(batch, generator=generator, device=generator.device) < p


def _per_sample(value: float | Tensor, x: Tensor) -> Tensor:
    """A scalar or ``[B]`` parameter as a ``[B or 1, 1, 1, 1]`` tensor matching ``x``."""
    return torch.as_tensor(value, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)


def _where(mask: Tensor | None, new: Tensor, old: Tensor) -> Tensor:
    """``new`` where the per-sample bool ``mask`` [B] is True (everywhere when None)."""
    return new if mask is None else torch.where(mask.reshape(-1, 1, 1, 1), new, old)


# ----------------------------------------------------------------------------- geometry

def sample_crop_boxes(batch: int, height: int, width: int, scale: tuple[float, float],
                      ratio: tuple[float, float], generator: torch.Generator,
                      attempts: int = 10) -> Tensor:
    """Random-resized-crop boxes, torchvision's ``RandomResizedCrop`` rule, vectorised.

    Per sample, ``attempts`` candidates (area fraction ~ U(scale), log aspect ~ U(log ratio))
    are drawn in parallel; the first that fits in the image wins, with a uniform position.
    Samples without a fitting candidate get the central crop clipped to the ratio bounds.

    Returns float32 ``[B, 4]`` boxes ``(top, left, height, width)`` in whole pixels.
    """
    area = height * width
    lo_r, hi_r = min(ratio), max(ratio)
    target = area * _uniform((batch, attempts), scale[0], scale[1], generator)
    aspect = torch.exp(_uniform((batch, attempts), math.log(lo_r), math.log(hi_r), generator))
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    tries = torch.arange(attempts, device=fits.device).expand(batch, attempts)
    first = torch.where(fits, tries, attempts).amin(dim=1, keepdim=True)
    found = first.squeeze(1) < attempts
    pick = first.clamp(max=attempts - 1)
    w, h = w.gather(1, pick).squeeze(1), h.gather(1, pick).squeeze(1)
    pos = torch.rand((2, batch), generator=generator, device=generator.device)
    top = torch.minimum((pos[0] * (height - h + 1)).floor(), height - h)
    left = torch.minimum((pos[1] * (width - w + 1)).floor(), width - w)
    if width / height < lo_r:  # central fallback, as torchvision
        fw, fh = width, int(round(width / lo_r))
    elif width / height > hi_r:
        fw, fh = int(round(height * hi_r)), height
    else:
        fw, fh = width, height
    boxes = torch.stack([top, left, h, w], dim=1)
    fallback = torch.tensor([(height - fh) // 2, (width - fw) // 2, fh, fw],
                            dtype=boxes.dtype, device=boxes.device)
    return torch.where(found[:, None], boxes, fallback)


def resized_crop(x: Tensor, boxes: Tensor, size: int, flip: Tensor | None = None) -> Tensor:
    """Crop each box and resize it to ``size x size`` (bilinear), in one ``grid_sample``.

    Matches torchvision's ``resized_crop`` (crop, then bilinear resize with
    ``align_corners=False``): sample points are clamped to the box, so no pixel from outside
    the box leaks in. Exact for upscaling; downscaling is not antialiased (torchvision's
    ``antialias=False``).

    x: float ``[B, C, H, W]``; boxes: ``[n*B, 4]`` (top, left, height, width), row ``v*B + b``
    cropping image ``b`` (so ``n`` crops per image without copying the images);
    flip: optional bool ``[n*B]``, mirror that crop horizontally for free.
    Returns ``[n*B, C, size, size]``.
    """
    b, c, height, width = x.shape
    n = boxes.shape[0] // b
    if n * b != boxes.shape[0]:
        raise ValueError(f"boxes has {boxes.shape[0]} rows, not a multiple of the batch {b}")
    top, left, bh, bw = boxes.to(x.dtype).unbind(1)
    steps = (torch.arange(size, device=x.device, dtype=x.dtype) + 0.5) / size  # [S]
    ys = torch.minimum((steps * bh[:, None] - 0.5).clamp(min=0), (bh - 1)[:, None])
    xs = torch.minimum((steps * bw[:, None] - 0.5).clamp(min=0), (bw - 1)[:, None])
    if flip is not None:
        xs = torch.where(flip[:, None], (bw - 1)[:, None] - xs, xs)
    gy = (top[:, None] + ys) * (2 / max(height - 1, 1)) - 1  # align_corners=True coordinates
    gx = (left[:, None] + xs) * (2 / max(width - 1, 1)) - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    grid = grid.view(n, b, size, size, 2).transpose(0, 1).reshape(b, n * size, size, 2)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.view(b, c, n, size, size).permute(2, 0, 1, 3, 4).reshape(n * b, c, size, size)


def hflip(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mirror ``[B, C, H, W]`` left-right; only samples where bool ``mask`` [B] is True."""
    return _where(mask, x.flip(-1), x)


# ----------------------------------------------------------------------------- colour

def rgb_to_gray(x: Tensor) -> Tensor:
    """Luma (ITU-R 601-2) ``[B, 1, H, W]`` of ``[B, 3, H, W]``; 1-channel input as is."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def grayscale(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Grey ``[B, C, H, W]`` keeping the channel count; only where ``mask`` [B] is True."""
    return _where(mask, rgb_to_gray(x).expand_as(x), x)


def _blend(a: Tensor, b: Tensor, factor: float | Tensor) -> Tensor:
    """``factor * a + (1 - factor) * b`` clamped to [0, 1] (one fused lerp)."""
    return torch.lerp(b.expand_as(a), a, _per_sample(factor, a)).clamp_(0, 1)


def adjust_brightness(x: Tensor, factor: float | Tensor) -> Tensor:
    """Multiply ``[B, C, H, W]`` by per-sample ``factor`` [B] (or scalar), clamped to [0, 1]."""
    return (x * _per_sample(factor, x)).clamp_(0, 1)


def adjust_contrast(x: Tensor, factor: float | Tensor) -> Tensor:
    """Blend each image with the mean of its greyscale by ``factor`` [B]; clamped."""
    means = x.mean(dim=(2, 3))  # [B, C]; the grey mean is the luma of the channel means
    if x.shape[1] == 3:
        means = means @ torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(3, 1)
    return _blend(x, means.view(-1, 1, 1, 1), factor)


def adjust_saturation(x: Tensor, factor: float | Tensor) -> Tensor:
    """Blend each image with its greyscale by ``factor`` [B]; clamped. 1-channel: as is."""
    return x if x.shape[1] == 1 else _blend(x, rgb_to_gray(x), factor)


def adjust_hue(x: Tensor, shift: float | Tensor) -> Tensor:
    """Rotate hue by ``shift`` [B] (fraction of a turn, in [-0.5, 0.5]) in HSV space.

    HSV round trip fused for speed: value ``v`` (max) and chroma ``c`` (max - min) are kept,
    the hue in sextants ``h6`` (mod 6) is shifted, and channel n in (5, 3, 1) is rebuilt as
    ``v - c * clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + h6) mod 6``.
    """
    if x.shape[1] == 1:
        return x
    v, top = x.max(dim=1, keepdim=True)  # [B, 1, H, W]; top = index of the max channel
    chroma = v - x.amin(dim=1, keepdim=True)
    # h6 = (next - previous channel) / chroma + 2 * top; ties give equal hues either way
    h6 = (x.roll(-1, 1) - x.roll(1, 1)).gather(1, top).div_(chroma.clamp(min=1e-12))
    h6.add_(2 * top).add_(6 * _per_sample(shift, x))
    n = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = (h6 + n).remainder_(6)
    return v - chroma * torch.minimum(k, 4 - k).clamp_(0, 1)


_ADJUST = {"brightness": adjust_brightness, "contrast": adjust_contrast,
           "saturation": adjust_saturation, "hue": adjust_hue}


def sample_jitter_params(batch: int, brightness: float, contrast: float, saturation: float,
                         hue: float, p: float, generator: torch.Generator) -> dict[str, Tensor]:
    """Per-sample colour-jitter parameters, torchvision ``ColorJitter``'s ranges.

    Returns ``[B]`` tensors: ``apply`` (bool, probability ``p``), factors
    ``brightness``/``contrast``/``saturation`` ~ U(max(0, 1 - s), 1 + s), ``hue`` ~ U(-h, h).
    Ops of strength 0 are left out (and then skipped).
    """
    params = {"apply": _bernoulli(batch, p, generator)}
    for name, strength in zip(_JITTER_OPS, (brightness, contrast, saturation, hue)):
        if strength > 0:
            low, high = (-hue, hue) if name == "hue" else (max(0.0, 1 - strength), 1 + strength)
            params[name] = _uniform(batch, low, high, generator)
    return params


def apply_color_jitter(x: Tensor, params: dict[str, Tensor],
                       order: Sequence[int] | Tensor = (0, 1, 2, 3), *, grouped: bool | None = None) -> Tensor:
    """Apply jitter ``params`` (from :func:`sample_jitter_params`) to ``[B, C, H, W]``.

    ``order`` indexes (brightness, contrast, saturation, hue): one order for the whole batch, or a
    ``[B, 4]`` tensor with each sample's own order (torchvision's ``ColorJitter`` draws a fresh
    order per image). Samples whose ``apply`` is False come back unchanged. A per-sample order runs
    ``grouped`` (by order; default on the CPU) or masked (every op at every position; no host sync).
    """
    out = x
    if grouped is None:
        grouped = x.device.type == "cpu"
    if isinstance(order, Tensor) and grouped:
        out = _jitter_by_order_groups(x, params, order)
    elif isinstance(order, Tensor):  # no host sync: at each position every op runs, each sample keeps its own
        for position in order.T:  # [B]: which op each sample takes at this position
            for i, name in enumerate(_JITTER_OPS):
                if name in params:
                    out = _where(position == i, _ADJUST[name](out, params[name]), out)
    else:
        for i in order:
            name = _JITTER_OPS[i]
            if name in params:
                out = _ADJUST[name](out, params[name])
    return _where(params.get("apply"), out, x)


def _jitter_by_order_groups(x: Tensor, params: dict[str, Tensor], order: Tensor) -> Tensor:
    """Per-sample ``order`` [B, 4] applied group by group: the samples sharing one of the 24 orders go
    through its 4 ops together, so every op runs once per sample (4x less arithmetic than the masked
    path). Reading the group sizes is a host sync, free on the CPU, hence used only there."""
    codes = order @ torch.tensor([64, 16, 4, 1], dtype=order.dtype, device=order.device)  # [B] order id
    out = torch.empty_like(x)
    for code in torch.unique(codes).tolist():
        index = (codes == code).nonzero().squeeze(1)
        group = x.index_select(0, index)
        for i in order[index[0]].tolist():
            name = _JITTER_OPS[i]
            if name in params:
                group = _ADJUST[name](group, params[name].index_select(0, index))
        out.index_copy_(0, index, group)
    return out


def sample_jitter_order(batch: int, generator: torch.Generator) -> Tensor:
    """A random order of the 4 jitter ops for each sample: ``[B, 4]`` long (no host sync)."""
    return torch.rand((batch, 4), generator=generator, device=generator.device).argsort(dim=1)


def color_jitter(x: Tensor, brightness: float, contrast: float, saturation: float, hue: float,
                 p: float, generator: torch.Generator,
                 order: Sequence[int] | Tensor | None = None) -> Tensor:
    """Random colour jitter of ``[B, C, H, W]``: per-sample factors, applied with prob ``p``.

    Each sample's op order is random (drawn from ``generator``) unless ``order`` is given.
    """
    params = sample_jitter_params(x.shape[0], brightness, contrast, saturation, hue, p, generator)
    if order is None:
        order = sample_jitter_order(x.shape[0], generator)
    return apply_color_jitter(x, params, order)


# ----------------------------------------------------------------------------- blur, solarize

def blur_kernel_size(size: int) -> int:
    """SimCLR's blur kernel side: 10% of the image side, made odd (1 means no blur)."""
    k = int(0.1 * size)
    return k + 1 if k % 2 == 0 else k


def gaussian_blur(x: Tensor, sigma: float | Tensor, kernel_size: int | None = None,
                  mask: Tensor | None = None) -> Tensor:
    """Gaussian blur of ``[B, C, H, W]`` with per-sample ``sigma`` [B] (or scalar).

    Separable grouped convolution (one group per sample and channel), reflect padding, the
    kernel torchvision's ``gaussian_blur`` uses. ``kernel_size`` (odd) defaults to
    :func:`blur_kernel_size` of the larger side. Only samples where ``mask`` is True change.
    """
    b, c, height, width = x.shape
    k = blur_kernel_size(max(height, width)) if kernel_size is None else kernel_size
    if k % 2 == 0:
        raise ValueError(f"gaussian_blur: kernel_size must be odd, got {k}")
    if k < 3:
        return x
    if k // 2 >= min(height, width):
        raise ValueError(f"gaussian_blur: kernel_size {k} too large for a {height}x{width} image")
    t = torch.linspace(-(k // 2), k // 2, k, dtype=x.dtype, device=x.device)
    sig = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1).expand(b, 1)
    kernel = torch.exp(-0.5 * (t / sig) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # [B*C, k]
    pad = k // 2
    y = F.pad(x.reshape(1, b * c, height, width), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, kernel.view(b * c, 1, 1, k), groups=b * c)
    y = F.conv2d(y, kernel.view(b * c, 1, k, 1), groups=b * c)
    return _where(mask, y.view(b, c, height, width), x)


def solarize(x: Tensor, threshold: float, mask: Tensor | None = None) -> Tensor:
    """Invert pixels ``>= threshold`` of ``[B, C, H, W]`` in [0, 1]; only where ``mask``."""
    return _where(mask, torch.where(x >= threshold, 1 - x, x), x)


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(x - mean) / std`` per channel for ``[B, C, H, W]``; mean/std of length C."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return torch.addcmul(-m / s, x, 1 / s)  # one fused pass


# ----------------------------------------------------------------------------- specs and views

@dataclass(frozen=True)
class AugmentSpec:
    """One view's augmentation (SimCLR recipe, Chen et al. 2020, appendix A).

    Applied in order: random resized crop to ``size`` (+ horizontal flip), colour jitter
    (prob ``jitter_p``), grayscale, Gaussian blur (sigma ~ U(blur_sigma)), solarize.
    """

    size: int  # output side in px (square)
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5  # on [0, 1] floats

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> ConfigError:
            return ConfigError(f"augment.{field}={getattr(self, field)!r}: {why}")

        if int(self.size) != self.size or self.size < 1:
            raise bad("size", "must be a positive integer")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise bad("crop_scale", "need 0 < low <= high <= 1")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise bad("crop_ratio", "need 0 < low <= high")
        for name in ("hflip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p",
                     "solarize_threshold"):
            if not 0 <= getattr(self, name) <= 1:
                raise bad(name, "must lie in [0, 1]")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        if not 0 <= self.hue <= 0.5:
            raise bad("hue", "must lie in [0, 0.5]")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise bad("blur_sigma", "need 0 < low <= high")

    @classmethod
    def simclr(cls, size: int, strength: float = 0.5, blur: bool | None = None,
               crop_scale: tuple[float, float] = (0.08, 1.0)) -> AugmentSpec:
        """SimCLR's view: jitter (0.8s, 0.8s, 0.8s, 0.2s) w.p. 0.8, grey w.p. 0.2, blur w.p. 0.5.

        ``blur=None`` blurs only from 64 px up (the paper omits blur for 32-px CIFAR).
        """
        use_blur = size >= 64 if blur is None else blur
        return cls(size=size, crop_scale=tuple(crop_scale), jitter_p=0.8,
                   brightness=0.8 * strength, contrast=0.8 * strength,
                   saturation=0.8 * strength, hue=0.2 * strength, grayscale_p=0.2,
                   blur_p=0.5 if use_blur else 0.0)

    @classmethod
    def identity(cls, size: int) -> AugmentSpec:
        """Resize only (central square crop if the image is not square); no randomness."""
        return cls(size=size, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0.0,
                   jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)


def _unit_range(images: Tensor) -> Tensor:
    """Float images as float32, refused unless every value lies in [0, 1] (NaN does not)."""
    x = images.float()
    low, high = (float(v) for v in torch.aminmax(x))  # NaN propagates, and fails the test below
    if not (0 <= low and high <= 1):
        hint = "; uint8-range values: pass uint8 images, or divide by 255" if high > 1.5 else ""
        raise DataError(f"float images must lie in [0, 1] (torchvision's ToTensor, not normalised: the view maker "
                        f"normalises with mean/std), got values in [{low:.3g}, {high:.3g}]{hint}")
    return x


class ViewMaker:
    """Turns a batch of images into normalised, augmented float views, all on the batch's device.

    ``views``: ``(spec, count)`` pairs, e.g. ``[(AugmentSpec.simclr(32), 2)]`` for two views or
    DINO's ``[(global_1, 1), (global_2, 1), (local, 6)]``. The ``count`` views of one spec are
    made together as one batch of ``count * B`` samples. Images are uint8 in [0, 255] or float in
    [0, 1] (torchvision's ``ToTensor`` convention); both give the same views. ``is_image=False``: the
    batches are float data that are not images (``data.name=sequence``; a split's ``is_image``), which
    are normalised only, every view the same tensor.
    """

    def __init__(self, views: Sequence[tuple[AugmentSpec, int]], mean: Sequence[float],
                 std: Sequence[float], *, is_image: bool = True) -> None:
        self.is_image = bool(is_image)
        self.views = [(spec, int(count)) for spec, count in views]
        if not self.views or any(count < 1 for _, count in self.views):
            raise ConfigError(f"views={views!r}: need at least one (spec, count>=1) pair")
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ConfigError(f"mean={mean!r}, std={std!r}: need equal lengths and std > 0")
        self.mean, self.std = tuple(map(float, mean)), tuple(map(float, std))

    @property
    def num_views(self) -> int:
        """Total number of views returned per call."""
        return sum(count for _, count in self.views)

    @torch.no_grad()
    def __call__(self, images: Tensor, generator: torch.Generator) -> list[Tensor]:
        """images: uint8 ``[B, C, H, W]`` in [0, 255] or float in [0, 1] -> ``num_views`` float32
        ``[B, C, size, size]``. With ``is_image=False``, float32 ``[B, C, H, W]`` non-image data:
        only normalised, every view that same tensor (no crop, flip or colour).

        Raises:
            DataError: float images with values outside [0, 1] (e.g. already normalised, or in
                [0, 255]); checking costs one host synchronisation per float batch (uint8 costs none).
        """
        if not (images.dtype == torch.uint8 or images.is_floating_point()) or images.dim() != 4:
            raise ValueError(f"ViewMaker wants uint8 or float images [B, C, H, W], got "
                             f"{images.dtype} {list(images.shape)}")
        if images.shape[1] != len(self.mean):
            raise ValueError(f"images have {images.shape[1]} channels but mean/std have "
                             f"{len(self.mean)}")
        if not self.is_image:
            if images.dtype != torch.float32:
                raise ValueError(f"ViewMaker(is_image=False) wants float32 non-image data, got {images.dtype}")
            return [normalize(images, self.mean, self.std)] * self.num_views
        if generator.device.type != images.device.type:
            raise ValueError(f"generator on {generator.device}, images on {images.device}")
        x = images.float().div_(255) if images.dtype == torch.uint8 else _unit_range(images)
        out: list[Tensor] = []
        for spec, count in self.views:
            out.extend(self._views(x, spec, count, generator).chunk(count))
        return out

    def _views(self, x: Tensor, spec: AugmentSpec, count: int, generator: torch.Generator) -> Tensor:
        """``count`` views of float ``[B, C, H, W]`` -> ``[count*B, C, size, size]``."""
        b, c, height, width = x.shape
        n = count * b
        boxes = sample_crop_boxes(n, height, width, spec.crop_scale, spec.crop_ratio, generator)
        flip = _bernoulli(n, spec.hflip_p, generator) if spec.hflip_p > 0 else None
        v = resized_crop(x, boxes, spec.size, flip=flip)
        if spec.jitter_p > 0:
            params = sample_jitter_params(n, spec.brightness, spec.contrast, spec.saturation,
                                          spec.hue, spec.jitter_p, generator)
            # Each view draws its own op order, as torchvision does per image: a shared order would
            # mark every image of a batch (or of one process) alike, a cue that separates positives
            # from negatives drawn by other processes.
            v = apply_color_jitter(v, params, sample_jitter_order(n, generator))
        if spec.grayscale_p > 0 and c == 3:
            v = grayscale(v, _bernoulli(n, spec.grayscale_p, generator))
        if spec.blur_p > 0:
            sigma = _uniform(n, spec.blur_sigma[0], spec.blur_sigma[1], generator)
            v = gaussian_blur(v, sigma, mask=_bernoulli(n, spec.blur_p, generator))
        if spec.solarize_p > 0:
            v = solarize(v, spec.solarize_threshold, _bernoulli(n, spec.solarize_p, generator))
        return normalize(v, self.mean, self.std)
