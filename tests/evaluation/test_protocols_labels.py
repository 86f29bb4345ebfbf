"""What the protocols say about labels that cannot give a meaningful accuracy (issue 16, points 4 and 8):
unlabelled splits are refused in one line, a k above the training-set size is reported under the k used
(with one warning), and data of one class get one warning that accuracy means nothing there."""
from __future__ import annotations

import warnings

import pytest
import torch

from selfsup.config import EvalConfig
from selfsup.core.errors import DataError
from selfsup.data import ImageDataset
from selfsup.evaluation.protocols import evaluate
from support import tiny_net


def _split(n: int, classes: list[str], labels: torch.Tensor | None = None, seed: int = 0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % max(len(classes), 1) if labels is None else labels
    images = torch.randint(0, 255, (n, 3, 6, 6), generator=g).to(torch.uint8)
    return ImageDataset(images, labels, classes, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _selfsup_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "selfsup" in w.filename]


def test_a_k_above_the_training_set_is_reported_under_the_k_used_with_one_warning():
    train, val = _split(30, ["a", "b", "c"]), _split(12, ["a", "b", "c"], seed=1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        results = evaluate(tiny_net(), train, val, EvalConfig(knn_k=[5, 200, 5000], linear=False), progress=False)
    assert set(results) == {"knn_k5", "knn_k30"}  # 200 and 5000 are both k=30 here: one result
    assert results["knn_k30"]["k"] == 30
    said = [m for m in _selfsup_warnings(record) if "eval.knn_k" in m]
    assert len(said) == 1 and "30 training images" in said[0] and "knn_k30" in said[0], said


def test_one_class_data_warn_that_accuracy_is_meaningless():
    train, val = _split(20, ["only"]), _split(8, ["only"], seed=1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        results = evaluate(tiny_net(), train, val, EvalConfig(knn_k=[3], linear=False), progress=False)
    assert results["knn_k3"]["top1"] == 1.0
    said = [m for m in _selfsup_warnings(record) if "one class" in m]
    assert len(said) == 1 and "meaningless" in said[0], _selfsup_warnings(record)
    # two named classes of which only one holds images: the same
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        evaluate(tiny_net(), _split(20, ["a", "b"], torch.zeros(20, dtype=torch.long)),
                 _split(8, ["a", "b"], torch.zeros(8, dtype=torch.long), seed=1),
                 EvalConfig(knn_k=[3], linear=False), progress=False)
    assert any("one class" in m for m in _selfsup_warnings(record))


def test_two_classes_give_no_label_warning():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        evaluate(tiny_net(), _split(20, ["a", "b"]), _split(8, ["a", "b"], seed=1),
                 EvalConfig(knn_k=[3], linear=False), progress=False)
    assert _selfsup_warnings(record) == []


@pytest.mark.parametrize("which", ["train", "val"])
def test_unlabelled_splits_are_refused_in_one_line(which):
    labelled, unlabelled = _split(20, ["a", "b"]), _split(20, [], torch.full((20,), -1))
    train, val = (unlabelled, labelled) if which == "train" else (labelled, unlabelled)
    with pytest.raises(DataError, match="labelled") as err:
        evaluate(tiny_net(), train, val, EvalConfig(knn_k=[3]), progress=False)
    assert "\n" not in str(err.value) and "class sub-folders" in str(err.value)
