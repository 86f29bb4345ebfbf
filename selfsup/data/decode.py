"""Image bytes to a square uint8 canvas, fast for JPEG: what streamed and sharded splits decode with.

:func:`decode_canvas` turns one file's bytes into uint8 ``[3, S, S]``: the centre square of the
image (its shorter side), resized to ``S`` (bilinear, antialiased). Two things make it cheap:

* **DCT-domain scaling** (libjpeg's ``scale_num / scale_denom``, Wallace 1991 §"scaling"): a JPEG is
  decoded straight to the smallest size whose shorter side is still ``>= S``. With
  `simplejpeg <https://pypi.org/project/simplejpeg/>`_ installed (``pip install 'selfsup[shards]'``),
  libjpeg-turbo decodes (faster than PIL's decoder, same scales); with PIL alone, ``Image.draft``
  scales. Either way the factor is ``1/2``, ``1/4`` or ``1/8``: a 1000 x 750 photo decodes to
  500 x 375 for ``S = 224``, a 500 x 375 one at full size (see :func:`_decode_scaled`).
* **One small uint8 resize**: torch's uint8 bilinear kernel on the cropped square, not a float copy of
  the whole image (and no ``ToTensor`` float conversion: the canvas stays uint8 until the device).

Every random augmentation happens later, batched on the training device
(:class:`~selfsup.data.augment.ViewMaker`), so the canvas is deterministic: the same bytes give
the same pixels on the same machine and libraries. Which JPEG decoder is in use
(:data:`JPEG_DECODER`) is part of every decoded-image cache key. An image already ``S x S`` is
decoded exactly as with no canvas at all (PIL, no resize), so a canvas of the native size changes
no pixel. With CUDA, :func:`decode_jpegs_cuda` decodes a batch of JPEGs with nvJPEG
(``torchvision.io.decode_jpeg(device="cuda")``) and resizes it on the GPU.
"""
from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

try:  # optional: libjpeg-turbo with all of its DCT scaling factors
    import simplejpeg
except ImportError:  # pragma: no cover - depends on the environment
    simplejpeg = None

__all__ = ["JPEG_DECODER", "decode_canvas", "decode_jpegs_cuda", "decode_rgb", "fit_canvas", "is_jpeg", "to_rgb"]

JPEG_DECODER = f"simplejpeg-{simplejpeg.__version__}" if simplejpeg is not None else "pil"


def is_jpeg(data: bytes) -> bool:
    """Whether ``data`` starts with a JPEG start-of-image marker."""
    return data[:3] == b"\xff\xd8\xff"


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB.

    Palette, greyscale, bilevel, CMYK and YCbCr convert as PIL does; alpha is dropped (as
    torchvision's loader does). 16-bit greyscale (``I;16*``, and ``I`` holding values above 255)
    is scaled by 255/65535 rather than clipped at 255 (PIL's ``convert`` would clip, turning most
    16-bit images white); float images (``F``) in [0, 1] are scaled by 255.
    """
    if img.mode.startswith("I") or img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        top = float(values.max()) if values.size else 0.0
        if img.mode.startswith("I;16") or (img.mode == "I" and top > 255):
            values = values * (255.0 / 65535.0)
        elif img.mode == "F" and top <= 1.0:
            values = values * 255.0
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids PIL's palette-transparency warning
    return img.convert("RGB")


def decode_rgb(data: bytes) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` of an image file's bytes at its own size, as
    :func:`~selfsup.data.imagefolder.decode_image` decodes a file (every mode becomes 8-bit RGB: :func:`to_rgb`)."""
    if not data:
        raise OSError("empty file")
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(to_rgb(img))


def _decode_scaled(data: bytes, size: int, width: int, height: int) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` with ``min(H, W) >= size`` (or the image's own size when smaller),
    decoded at the smallest DCT scale ``1/2``, ``1/4`` or ``1/8`` that allows it.

    Only these power-of-two scales are used, by both decoders: libjpeg-turbo's other factors
    (``5/8``, ``6/8``, ...) decode no faster than the full image (measured: 2.09 vs 1.93 ms for a
    500 x 375 photo to 224 px, eval/scripts/decode_bench.py), and PIL's ``draft`` has no others.
    """
    factor = next((k for k in (8, 4, 2) if -(-min(width, height) // k) >= size), 1)
    if simplejpeg is not None and is_jpeg(data):
        try:
            if factor == 1:  # the scaling arguments alone cost 0.2 ms (a 500 x 375 photo)
                return simplejpeg.decode_jpeg(data, colorspace="RGB")
            return simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=-(-height // factor),
                                          min_width=-(-width // factor))
        except ValueError:  # CMYK, 12-bit, damaged: PIL decides (and names the problem)
            pass
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (size, size))  # JPEG only; the largest of 1/2, 1/4, 1/8 that stays >= size
        return np.asarray(to_rgb(img))


def fit_canvas(image: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """The centre square of ``image`` (uint8 ``[H, W, 3]``) resized to uint8 ``[3, size, size]``
    (bilinear, antialiased when shrinking; half-pixel centres); a view of it when already that size.
    The result may have channels-last strides (no copy here: the caller copies it into its batch)."""
    x = torch.as_tensor(image)
    h, w = int(x.shape[0]), int(x.shape[1])
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[top:top + side, left:left + side].permute(2, 0, 1)
    if side == size:
        return x
    if x.device.type == "cpu":  # torch's uint8 kernel: no float copy
        y = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    else:  # GPUs resize floats
        y = F.interpolate(x[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        y = y.round_().clamp_(0, 255).to(torch.uint8)
    return y[0]  # channels-last strides: the caller's copy into its batch makes it [3, S, S]-contiguous


def decode_canvas(data: bytes, size: int) -> torch.Tensor:
    """An image file's bytes as uint8 ``[3, size, size]``: its centre square resized to ``size``.

    JPEGs decode at the smallest DCT scale whose shorter side is ``>= size``; an image already
    ``size x size`` decodes as :func:`decode_rgb` does, untouched. Raises ``OSError`` /
    ``ValueError`` for bytes that are no readable image.
    """
    if not data:
        raise OSError("empty file")
    native = _native_size(data)
    if native == (size, size) or native is None:  # None: unreadable, decode_rgb says why
        return torch.from_numpy(np.ascontiguousarray(decode_rgb(data).transpose(2, 0, 1)))
    array = _decode_scaled(data, size, *native)
    if not array.flags.writeable:  # PIL's arrays are read-only views; torch wants to own writable memory
        array = array.copy()
    return fit_canvas(array, size)


def _native_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from the header, without decoding; ``None`` when it cannot be read."""
    if simplejpeg is not None and is_jpeg(data):
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            return width, height
        except ValueError:
            pass
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:  # unreadable: the decode that follows names the problem
        return None


def decode_jpegs_cuda(datas: list[bytes], size: int, device: torch.device | str = "cuda") -> torch.Tensor:
    """A batch of JPEG files' bytes as uint8 ``[n, 3, size, size]`` on ``device``: nvJPEG decodes them
    (``torchvision.io.decode_jpeg(device=...)``, one call for the batch), then each centre square is
    resized there (bilinear, antialiased). The pixels may differ from :func:`decode_canvas`'s by
    rounding (another IDCT and resize), so a run keeps one decoder from start to end."""
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8, device=device)
    for i, img in enumerate(images):  # [3, H, W] each
        out[i] = fit_canvas(img.permute(1, 2, 0), size)
    return out
