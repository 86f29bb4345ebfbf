"""Segmentation transfer: mIoU against a numpy reference, a few-step run writes its metrics, the frozen regime
leaves every encoder tensor bit-identical (and fine-tuning does not)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import selfsup.transfer.segmentation as seg
from selfsup.core.errors import DataError
from selfsup.transfer.segmentation import confusion_matrix, run_segmentation, segmentation_scores

pytestmark = pytest.mark.usefixtures("one_thread")


def _reference_miou(pred: np.ndarray, target: np.ndarray, k: int) -> tuple[float, float]:
    """IoU per class by counting pixels, mean over classes present in truth or prediction (VOC's definition)."""
    keep = target != 255
    p, t = pred[keep], target[keep]
    ious = []
    for c in range(k):
        inter = np.sum((p == c) & (t == c))
        union = np.sum((p == c) | (t == c))
        if union:
            ious.append(inter / union)
    return float(np.mean(ious)), float(np.mean(p == t))


def test_miou_and_pixel_accuracy_equal_a_numpy_reference():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, (3, 17, 13))  # class 5 never occurs: it must not count
    target[rng.random(target.shape) < 0.2] = 255
    pred = np.where(rng.random(target.shape) < 0.6, np.where(target == 255, 0, target), rng.integers(0, 5, target.shape))
    scores = segmentation_scores(confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), 6))
    miou, acc = _reference_miou(pred, target, 6)
    assert scores["mIoU"] == pytest.approx(miou, abs=1e-12) and scores["pixel_accuracy"] == pytest.approx(acc, abs=1e-12)
    assert scores["iou_per_class"][5] is None


@pytest.fixture
def captured(monkeypatch):
    """The encoder's tensors as loaded (before training) and the live FeatureMaps after the run."""
    seen = {}
    real = seg.open_maps

    def spy(path, cfg):
        maps, mean, std = real(path, cfg)
        seen["before"] = {k: v.clone() for k, v in maps.encoder.state_dict().items()}
        seen["maps"] = maps
        return maps, mean, std

    monkeypatch.setattr(seg, "open_maps", spy)
    return seen


def _changed(seen) -> list[str]:
    after = seen["maps"].encoder.state_dict()
    return [k for k, v in seen["before"].items() if not torch.equal(v, after[k])]


def test_frozen_linear_probe_writes_metrics_and_leaves_the_encoder_bit_identical(resnet_export, scenes, tmp_path,
                                                                                  captured):
    out = tmp_path / "lin"
    result = run_segmentation(resnet_export, [f"data.root={scenes}", "train.steps=2", "train.batch_size=2",
                                              f"run.dir={out}", "data.num_classes=11"])
    assert not _changed(captured)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["regime"] == "frozen" and metrics["head"] == "linear" and 0 <= metrics["mIoU"] <= 1
    assert len(metrics["iou_per_class"]) == 11 and (out / "config.yaml").is_file() and result["out"] == str(out)


def test_fine_tuned_fcn_head_changes_the_encoder(resnet_export, scenes, tmp_path, captured):
    result = run_segmentation(resnet_export, [f"data.root={scenes}", "model.head=fcn", "model.regime=last_k",
                                              "train.steps=1", "train.batch_size=2", f"run.dir={tmp_path / 'fcn'}"])
    changed = _changed(captured)
    assert changed and all(k.startswith("layer4.") for k in changed)  # last_k=1: only the last stage moves
    assert result["regime"] == "last_k" and (tmp_path / "fcn" / "metrics.json").is_file()


def test_mask_size_differing_from_its_image_is_a_one_line_error(scenes, tmp_path):
    root = tmp_path / "voc"
    shutil.copytree(scenes, root)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "SegmentationClass" / "val_000001.png")
    with pytest.raises(DataError, match="val_000001.png is 16x16, its image is 32x32"):
        run_segmentation(root, [f"data.root={root}"])
