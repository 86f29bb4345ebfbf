"""Detection transfer: COCO mAP comes from pycocotools' COCOeval (1.0 for perfect boxes, the evaluator's own
value for shifted ones); a few-step Mask R-CNN run on generated scenes writes metrics and COCO results."""
from __future__ import annotations

import contextlib
import copy
import io
import json

import pytest
from pycocotools.cocoeval import COCOeval

from selfsup.transfer.coco import coco_evaluate, load_coco
from selfsup.transfer.detection import run_detection

pytestmark = pytest.mark.usefixtures("one_thread")


def _results(split, shift: float = 0.0) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
             "bbox": [a["bbox"][0] + shift, a["bbox"][1] + shift, a["bbox"][2], a["bbox"][3]]}
            for a in split.coco.dataset["annotations"]]


def test_perfect_boxes_score_one(scenes):
    split = load_coco(scenes / "annotations/instances_val.json", scenes / "JPEGImages")
    assert coco_evaluate(split, _results(split), "bbox") == {"mAP": 1.0, "AP50": 1.0, "AP75": 1.0}


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
