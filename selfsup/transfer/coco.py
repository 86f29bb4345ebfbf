"""Dense-transfer data: COCO JSON (boxes, instance masks) and VOC-layout semantic masks, checked on reading;
COCO evaluation through pycocotools' own ``COCOeval`` (no home-made mAP).

Every problem a user can cause is a one-line :class:`~selfsup.core.errors.DataError` (CLI exit 2): a
missing annotation file or image, a box outside its image, an instance or semantic mask whose size
differs from its image, a train split with a category no (non-crowd) annotation uses.
"""
from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.core.errors import ConfigError, DataError

__all__ = ["CocoSplit", "load_coco", "read_image", "coco_evaluate", "load_voc", "BOX_TOLERANCE"]

BOX_TOLERANCE = 1.0  # pixels a box may pass the image border by (annotation tools round outwards)


def _pycocotools():
    try:
        from pycocotools.coco import COCO
    except ImportError as exc:
        raise ConfigError("dense transfer needs pycocotools: pip install 'selfsup[transfer]'") from exc
    return COCO


def read_image(path: Path) -> Tensor:
    """uint8 ``[3, H, W]`` RGB from a PNG / JPEG file; one-line DataError when missing or unreadable."""
    from torchvision.io import ImageReadMode, decode_image

    if not path.is_file():
        raise DataError(f"image not found: {path}")
    try:
        return decode_image(str(path), mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError) as exc:
        raise DataError(f"unreadable image {path}: {str(exc).splitlines()[0]}") from exc


@dataclass
class CocoSplit:
    """One COCO split: the ``pycocotools.coco.COCO`` index, its images and a contiguous label map.

    ``labels[category_id]`` is 1..K (0 is the detector's background); ``category_ids[label - 1]`` maps back.
    """

    coco: object
    image_ids: list[int]
    image_dir: Path
    category_ids: list[int]
    has_masks: bool
    labels: dict[int, int] = field(default_factory=dict)

    def image(self, image_id: int) -> Tensor:
        """uint8 ``[3, H, W]``; DataError when its size differs from the annotation file's."""
        info = self.coco.imgs[image_id]
        img = read_image(self.image_dir / info["file_name"])
        if tuple(img.shape[1:]) != (info["height"], info["width"]):
            raise DataError(f"image {self.image_dir / info['file_name']} is {img.shape[2]}x{img.shape[1]}, "
                            f"its annotation says {info['width']}x{info['height']}")
        return img

    def target(self, image_id: int, masks: bool = True) -> dict[str, Tensor]:
        """torchvision's detection target: ``boxes`` float ``[n, 4]`` (x1, y1, x2, y2), ``labels`` int64 ``[n]``
        and, when the split has masks and ``masks`` is true, ``masks`` uint8 ``[n, H, W]``; crowd annotations
        are left out."""
        info = self.coco.imgs[image_id]
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=torch.float32).reshape(-1, 4)
        out = {"boxes": boxes, "labels": torch.tensor([self.labels[a["category_id"]] for a in anns], dtype=torch.int64)}
        if self.has_masks and masks:
            decoded = [self.coco.annToMask(a) for a in anns]
            out["masks"] = torch.from_numpy(np.stack(decoded)) if decoded else \
                torch.zeros((0, info["height"], info["width"]), dtype=torch.uint8)
        return out


def load_coco(annotations: str | Path, image_dir: str | Path, *, every_category: bool = False) -> CocoSplit:
    """Read a COCO instances file and check it (see the module docstring); images are read later, per batch.
    ``every_category`` (a train split): each listed category must have a non-crowd annotation, else a detector
    would get an output it can never learn (and val AP for a class it never saw)."""
    COCO = _pycocotools()
    path = Path(annotations).expanduser()
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints "loading annotations..."
            coco = COCO(str(path))
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"unreadable COCO annotation file {path}: {exc}") from exc
    if not coco.dataset.get("categories"):
        raise DataError(f"{path} lists no categories")
    for ann in coco.dataset.get("annotations", []):
        _check_annotation(ann, coco.imgs, path)
    cats = sorted(coco.cats)
    if every_category:
        used = {a.get("category_id") for a in coco.dataset.get("annotations", []) if not a.get("iscrowd", 0)}
        empty = [c for c in cats if c not in used]
        if empty:
            names = ", ".join(f"{c} ({coco.cats[c].get('name', '?')})" for c in empty[:5])
            raise DataError(f"{path}: categor{'y' if len(empty) == 1 else 'ies'} {names}"
                            f"{f' and {len(empty) - 5} more' if len(empty) > 5 else ''} "
                            f"{'has' if len(empty) == 1 else 'have'} no annotation in this split: annotate "
                            f"or drop {'it' if len(empty) == 1 else 'them'} (in every split's 'categories')")
    has_masks = any("segmentation" in a and a["segmentation"] for a in coco.dataset.get("annotations", []))
    return CocoSplit(coco, sorted(coco.imgs), Path(image_dir).expanduser(), cats, has_masks,
                     {c: i + 1 for i, c in enumerate(cats)})


def _check_annotation(ann: dict, images: dict, path: Path) -> None:
    info = images.get(ann.get("image_id"))
    if info is None:
        raise DataError(f"{path}: annotation {ann.get('id')} refers to image {ann.get('image_id')}, which is not listed")
    x, y, w, h = (float(v) for v in ann["bbox"])
    width, height = info["width"], info["height"]
    t = BOX_TOLERANCE
    if w <= 0 or h <= 0 or x < -t or y < -t or x + w > width + t or y + h > height + t:
        raise DataError(f"{path}: annotation {ann.get('id')} box [{x:g}, {y:g}, {w:g}, {h:g}] lies outside its "
                        f"image {ann['image_id']} ({width}x{height}) or is empty")
    seg = ann.get("segmentation")
    if isinstance(seg, dict) and [int(v) for v in seg.get("size", [height, width])] != [height, width]:
        raise DataError(f"{path}: annotation {ann.get('id')} mask is {seg['size'][1]}x{seg['size'][0]}, "
                        f"its image {ann['image_id']} is {width}x{height}")


def coco_evaluate(split: CocoSplit, results: list[dict], iou_type: str) -> dict[str, float]:
    """COCO mAP@[.5:.95], AP50 and AP75 (``COCOeval.stats[0:3]``) of ``results`` (COCO results format) on
    ``split``'s images; all zero when there are no detections (pycocotools cannot load an empty list)."""
    from pycocotools.cocoeval import COCOeval

    if not results:
        return {"mAP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its table
        dt = split.coco.loadRes(json.loads(json.dumps(results)))
        ev = COCOeval(split.coco, dt, iou_type)
        ev.params.imgIds = list(split.image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: max(0.0, float(v)) for k, v in zip(("mAP", "AP50", "AP75"), ev.stats[:3])}  # -1: no ground truth


def load_voc(root: str | Path, split: str, size: int = 0) -> tuple[Tensor, Tensor]:
    """A VOC-layout segmentation split: ``root/ImageSets/Segmentation/{split}.txt`` names the images
    ``root/JPEGImages/NAME.{jpg,png}`` and masks ``root/SegmentationClass/NAME.png`` (class indices, 255 ignored).

    Returns uint8 images ``[N, 3, S, S]`` and int64 masks ``[N, S, S]``, resized to ``size`` (bilinear /
    nearest) when ``size`` > 0 (then every image must have the same size ``S``).
    """
    root = Path(root).expanduser()
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise DataError(f"segmentation split list not found: {listing} (VOC layout expected)")
    names = [n.strip() for n in listing.read_text().splitlines() if n.strip()]
    if not names:
        raise DataError(f"{listing} names no images")
    images, masks = [], []
    for name in names:
        found = [root / "JPEGImages" / f"{name}{ext}" for ext in (".jpg", ".png", ".jpeg")]
        img = read_image(next((p for p in found if p.is_file()), found[0]))
        mask_path = root / "SegmentationClass" / f"{name}.png"
        mask = _read_mask(mask_path)
        if tuple(mask.shape) != tuple(img.shape[1:]):
            raise DataError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]}, its image is "
                            f"{img.shape[2]}x{img.shape[1]}")
        if size > 0 and tuple(img.shape[1:]) != (size, size):
            img = F.interpolate(img[None].float(), size=(size, size), mode="bilinear", antialias=True,
                                align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
            mask = F.interpolate(mask[None, None].float(), size=(size, size), mode="nearest")[0, 0].long()
        images.append(img)
        masks.append(mask)
    if len({tuple(i.shape) for i in images}) > 1:
        raise DataError(f"{root}: images differ in size; set data.size to resize them to one side")
    return torch.stack(images), torch.stack(masks)


def _read_mask(path: Path) -> Tensor:
    """int64 ``[H, W]`` class indices of a palette or grey PNG (VOC's masks are palette images)."""
    from PIL import Image

    if not path.is_file():
        raise DataError(f"mask not found: {path}")
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise DataError(f"mask {path} must be a palette or grey PNG of class indices, not mode {im.mode}")
            return torch.from_numpy(np.array(im, dtype=np.int64))
    except OSError as exc:
        raise DataError(f"unreadable mask {path}: {exc}") from exc
