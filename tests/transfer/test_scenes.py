"""The generated scene dataset: deterministic from its seed, a COCO round trip, VOC masks that agree with it;
bad annotations are one-line DataErrors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from selfsup.cli import main
from selfsup.core.errors import DataError
from selfsup.transfer.coco import load_coco, load_voc
from selfsup.transfer.detection import run_detection
from selfsup.transfer.scenes import write_scenes


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = write_scenes(tmp_path / "a", seed=5, num_train=3, num_val=2, size=32)
    assert main(["data", "scenes", "--out", str(tmp_path / "b"), "--seed", "5", "--num-train", "3",
                 "--num-val", "2", "--size", "32"]) == 0
    c = write_scenes(tmp_path / "c", seed=6, num_train=3, num_val=2, size=32)
    assert _files(a) == _files(tmp_path / "b")
    assert _files(a)["JPEGImages/train_000000.png"] != _files(c)["JPEGImages/train_000000.png"]


def test_coco_round_trip_agrees_with_the_semantic_masks(scenes):
    for split in ("train", "val"):
        coco = COCO(str(scenes / "annotations" / f"instances_{split}.json"))
        assert sorted(coco.cats) == list(range(1, 11)) and coco.dataset["annotations"]
        for ann in coco.dataset["annotations"]:
            info = coco.imgs[ann["image_id"]]
            mask = coco.annToMask(ann).astype(bool)
            sem = np.array(Image.open(scenes / "SegmentationClass" / info["file_name"]))
            rgb = np.array(Image.open(scenes / "JPEGImages" / info["file_name"]))
            assert rgb.shape == (info["height"], info["width"], 3) and sem.shape == rgb.shape[:2]
            assert (sem[mask] == ann["category_id"]).all()  # semantic value = 1 + digit = category id
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["area"] == mask.sum()
    split = load_coco(scenes / "annotations/instances_train.json", scenes / "JPEGImages")
    target = split.target(split.image_ids[0])
    assert target["masks"].shape[1:] == (32, 32) and len(target["boxes"]) == len(target["labels"]) >= 1
    images, masks = load_voc(scenes, "val")
    assert images.shape == (3, 3, 32, 32) and set(masks.unique().tolist()) <= set(range(11)) | {255}


def _edit(scenes, tmp_path, name, change):
    data = json.loads((scenes / "annotations/instances_train.json").read_text())
    change(data)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def test_bad_annotations_are_one_line_errors(scenes, tmp_path, capsys):
    with pytest.raises(DataError, match="annotation file not found"):
        load_coco(tmp_path / "missing.json", scenes)
    outside = _edit(scenes, tmp_path, "outside", lambda d: d["annotations"][0].update(bbox=[20, 20, 30, 5]))
    with pytest.raises(DataError, match="lies outside its image"):
        load_coco(outside, scenes)
    resized = _edit(scenes, tmp_path, "resized", lambda d: d["annotations"][0]["segmentation"].update(size=[16, 16]))
    with pytest.raises(DataError, match="mask is 16x16"):
        load_coco(resized, scenes)
    ghost = _edit(scenes, tmp_path, "ghost", lambda d: d["categories"].append({"id": 99, "name": "ghost"}))
    assert 99 in load_coco(ghost, scenes).category_ids  # a val split may lack a category
    with pytest.raises(DataError, match=r"ghost.json: category 99 \(ghost\) has no annotation in this split"):
        load_coco(ghost, scenes, every_category=True)  # a train split may not: detection loads it so
    with pytest.raises(DataError, match=r"category 99 \(ghost\) has no annotation"):
        run_detection(scenes, [f"data.train={ghost}", f"data.val={ghost}", f"data.train_images={scenes}",
                               f"data.val_images={scenes}", f"run.dir={tmp_path / 'run'}"])
    code = main(["transfer", "detection", str(scenes), f"data.train={outside}", f"data.val={outside}",
                 f"data.train_images={scenes}", f"data.val_images={scenes}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "lies outside its image" in err and len(err.splitlines()) == 1
