"""A generated scene dataset for dense-transfer tests and CPU runs: digits pasted on textured backgrounds.

Each image (``size`` x ``size`` RGB) holds 1-3 of scikit-learn's bundled 8x8 handwritten digits, each
scaled to 25-50% of the side with nearest-neighbour upsampling, tinted with a random colour and pasted
at a random position on a random texture (a smoothed colour noise plus stripes); later digits occlude
earlier ones. Written as::

    DIR/JPEGImages/{split}_{i:06d}.png            RGB images (VOC's folder name; PNG files)
    DIR/SegmentationClass/{split}_{i:06d}.png     semantic masks: 0 background, 1 + digit class, 255 none
    DIR/ImageSets/Segmentation/{split}.txt        image names of each split (VOC layout)
    DIR/annotations/instances_{split}.json        COCO: images, categories digit0..digit9 (ids 1..10),
                                                  annotations with bbox [x, y, w, h], area, iscrowd 0 and
                                                  the visible instance mask as RLE (pycocotools)

Everything is a function of ``seed`` (numpy's PCG64 generator): the same arguments give byte-identical files.
A 1-pixel band around each digit's visible mask is 255 (ignored) in the semantic mask, as VOC's object borders.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.core.errors import ConfigError
from selfsup.core.files import writing

__all__ = ["write_scenes", "CATEGORIES"]

CATEGORIES = [{"id": i + 1, "name": f"digit{i}", "supercategory": "digit"} for i in range(10)]


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)  # [1797, 8, 8] in [0, 1]


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random background ``[size, size, 3]`` float in [0, 1]: smoothed colour noise plus stripes."""
    noise = torch.from_numpy(rng.random((1, 3, size // 8, size // 8), dtype=np.float32))
    smooth = F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 16)
    stripes = 0.5 + 0.5 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    return 0.25 + 0.35 * smooth + 0.15 * stripes[..., None] * rng.random(3, dtype=np.float32)


def _scene(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, size: int):
    """One image: uint8 ``[size, size, 3]``, instance ids ``[size, size]`` (0 none) and their classes."""
    canvas = _texture(rng, size)
    instance = np.zeros((size, size), np.int32)
    classes = []
    for k in range(int(rng.integers(1, 4))):  # 1-3 digits
        j = int(rng.integers(len(images)))
        side = int(rng.integers(size // 4, size // 2 + 1))
        digit = F.interpolate(torch.from_numpy(images[j])[None, None], size=(side, side), mode="nearest")[0, 0].numpy()
        y, x = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
        ink = digit > 0.3
        colour = rng.uniform(0.6, 1.0, 3).astype(np.float32) * rng.choice([-1, 1])
        patch = canvas[y:y + side, x:x + side]
        patch[ink] = np.clip(0.5 + 0.5 * colour, 0, 1) if colour[0] > 0 else np.clip(-colour * 0.15, 0, 1)
        instance[y:y + side, x:x + side][ink] = k + 1
        classes.append(int(labels[j]))
    return (canvas * 255).round().astype(np.uint8), instance, classes


def _annotations(instance: np.ndarray, classes: list[int], image_id: int, next_id: int) -> list[dict]:
    """COCO annotations of the visible instances (an instance hidden entirely by later ones is dropped)."""
    from pycocotools import mask as mask_utils

    anns = []
    for k, cls in enumerate(classes, start=1):
        m = instance == k
        if not m.any():
            continue
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
        rle["counts"] = rle["counts"].decode("ascii")
        anns.append({"id": next_id + len(anns), "image_id": image_id, "category_id": cls + 1,
                     "bbox": [x, y, w, h], "area": float(m.sum()), "iscrowd": 0, "segmentation": rle})
    return anns


def _semantic(instance: np.ndarray, classes: list[int]) -> np.ndarray:
    """Semantic mask: 0 background, 1 + class on each visible instance, 255 on a 1-px band around each."""
    sem = np.zeros(instance.shape, np.uint8)
    for k, cls in enumerate(classes, start=1):
        sem[instance == k] = cls + 1
    fg = torch.from_numpy((instance > 0).astype(np.float32))[None, None]
    grown = F.max_pool2d(fg, 3, 1, 1)[0, 0].numpy() > 0
    sem[grown & (instance == 0)] = 255
    return sem


def write_scenes(out: str | Path, *, seed: int = 0, num_train: int = 64, num_val: int = 16, size: int = 64) -> Path:
    """Write the scene dataset (see the module docstring) to ``out``; returns ``out``.

    Raises:
        ConfigError: ``size`` under 16 or not a multiple of 8, or a split count below 1.
    """
    from PIL import Image

    if size < 16 or size % 8:
        raise ConfigError(f"scenes --size must be a multiple of 8 and at least 16, got {size}")
    if num_train < 1 or num_val < 1:
        raise ConfigError(f"scenes need at least one train and one val image, got {num_train} and {num_val}")
    out = Path(out).expanduser()
    rng = np.random.default_rng(seed)
    images, labels = _digits()
    with writing(out):
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation", "annotations"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        for split, count in (("train", num_train), ("val", num_val)):
            coco = {"info": {"description": f"selfsup scenes seed={seed} size={size}"}, "images": [],
                    "annotations": [], "categories": CATEGORIES}
            names = []
            for i in range(count):
                name = f"{split}_{i:06d}"
                rgb, instance, classes = _scene(rng, images, labels, size)
                Image.fromarray(rgb).save(out / "JPEGImages" / f"{name}.png")
                Image.fromarray(_semantic(instance, classes)).save(out / "SegmentationClass" / f"{name}.png")
                coco["images"].append({"id": i + 1, "file_name": f"{name}.png", "height": size, "width": size})
                coco["annotations"] += _annotations(instance, classes, i + 1, len(coco["annotations"]) + 1)
                names.append(name)
            (out / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
            (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco) + "\n")
    return out
