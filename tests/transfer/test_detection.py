"""Detection transfer: COCO mAP comes from pycocotools' COCOeval (1.0 for perfect boxes, the evaluator's own
value for shifted ones); a few-step Mask R-CNN run on generated scenes writes metrics and COCO results, so do
RetinaNet and FCOS (box AP only, though the scenes have masks); anchors are one size per level."""
from __future__ import annotations

import contextlib
import copy
import io
import json

import typing

import pytest
from pycocotools.cocoeval import COCOeval

from selfsup.transfer import load_feature_maps
from selfsup.transfer.coco import coco_evaluate, load_coco
from selfsup.transfer.config import TransferModel
from selfsup.transfer.detection import run_detection
from selfsup.transfer.detectors import DETECTORS, build_detector

pytestmark = pytest.mark.usefixtures("one_thread")


def _results(split, shift: float = 0.0) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
             "bbox": [a["bbox"][0] + shift, a["bbox"][1] + shift, a["bbox"][2], a["bbox"][3]]}
            for a in split.coco.dataset["annotations"]]


def test_perfect_boxes_score_one(scenes):
    split = load_coco(scenes / "annotations/instances_val.json", scenes / "JPEGImages")
    scores = coco_evaluate(split, _results(split), "bbox")  # COCOeval's averaging: 1 up to rounding
    assert set(scores) == {"mAP", "AP50", "AP75"} and list(scores.values()) == pytest.approx([1.0] * 3, abs=1e-12)


def test_shifted_boxes_score_what_cocoeval_says(scenes):
    split = load_coco(scenes / "annotations/instances_val.json", scenes / "JPEGImages")
    shifted = _results(split, shift=2.0)
    ours = coco_evaluate(split, copy.deepcopy(shifted), "bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(split.coco, split.coco.loadRes(shifted), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert [ours["mAP"], ours["AP50"], ours["AP75"]] == pytest.approx(list(ev.stats[:3]), abs=1e-12)
    assert ours["mAP"] < 1.0


def test_few_step_mask_rcnn_writes_metrics_and_coco_results(resnet_export, scenes, tmp_path):
    out = tmp_path / "det"
    result = run_detection(resnet_export, [f"data.root={scenes}", "train.steps=2", "train.batch_size=2",
                                           f"run.dir={out}", "model.regime=last_k", "model.fpn_channels=16"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["detector"] == "mask_rcnn" and set(metrics["bbox"]) == {"mAP", "AP50", "AP75"} and "segm" in metrics
    assert result["bbox"] == metrics["bbox"]
    for name in ("detections_bbox.json", "detections_segm.json"):
        rows = json.loads((out / name).read_text())
        assert isinstance(rows, list) and all({"image_id", "category_id", "bbox", "score"} <= set(r) for r in rows)


def test_every_detector_is_a_config_choice():
    assert set(typing.get_args(typing.get_type_hints(TransferModel)["detector"])) == {"auto", *DETECTORS}


@pytest.mark.parametrize("kind, sizes", [("retinanet", [4, 8, 16, 32, 64]), ("fcos", [1, 2, 4, 8, 16])])
def test_one_anchor_size_per_level(resnet_export, kind, sizes):
    maps = load_feature_maps(resnet_export)  # small stem: strides 1, 2, 4, 8 (+ the FPN's pool level, 16)
    model = build_detector(kind, maps, 10, mean=[0.5] * 3, std=[0.25] * 3, min_size=32, max_size=53,
                           fpn_channels=16, anchor_scale=4.0)  # RetinaNet: 4 x stride; FCOS: the stride
    assert [s[0] for s in model.anchor_generator.sizes] == sizes
    assert model.anchor_generator.num_anchors_per_location()[0] == (3 if kind == "retinanet" else 1)


@pytest.mark.parametrize("kind, losses", [("retinanet", {"classification", "bbox_regression"}),
                                          ("fcos", {"classification", "bbox_regression", "bbox_ctrness"})])
def test_few_step_one_stage_detector_reports_box_ap_only(resnet_export, scenes, tmp_path, kind, losses):
    out = tmp_path / kind
    result = run_detection(resnet_export, [f"data.root={scenes}", "train.steps=2", "train.batch_size=2",
                                           f"run.dir={out}", f"model.detector={kind}", "model.fpn_channels=16"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["detector"] == kind and set(metrics["final_losses"]) == losses
    assert set(metrics["bbox"]) == {"mAP", "AP50", "AP75"} and all(0 <= v <= 1 for v in metrics["bbox"].values())
    assert "segm" not in metrics and not (out / "detections_segm.json").exists()  # the scenes have masks
    assert result["bbox"] == metrics["bbox"]
    assert isinstance(json.loads((out / "detections_bbox.json").read_text()), list)
