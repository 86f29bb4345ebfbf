"""The online monitor and labels (issue 16, points 4 and 8): on unlabelled data its label-reading parts (the
online kNN and linear classifier) stand aside with one notice while the collapse indicators stay; on data of
one class it warns once that its accuracies mean nothing."""
from __future__ import annotations

import warnings

import torch

from selfsup.config import EvalConfig
from selfsup.data import ImageDataset
from selfsup.engine.monitor import OnlineMonitor


def _split(labels: torch.Tensor, classes: list[str]) -> ImageDataset:
    images = torch.randint(0, 255, (len(labels), 3, 6, 6), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    return ImageDataset(images, labels, classes, (0.5,) * 3, (0.25,) * 3)


def _monitor(data: ImageDataset) -> tuple[OnlineMonitor, list[str]]:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        monitor = OnlineMonitor(EvalConfig(online_every_steps=1), data, num_features=4, steps_per_epoch=2, seed=0,
                                device=torch.device("cpu"))
    return monitor, [str(w.message) for w in record]


def test_unlabelled_data_switch_off_the_label_parts_with_one_notice():
    monitor, said = _monitor(_split(torch.full((20,), -1), []))
    assert len(said) == 1 and "no labels" in said[0] and "collapse indicators" in said[0], said
    assert not monitor.knn_due(1)
    features = torch.randn(8, 4)
    logs = monitor.update([{"features": features, "embeddings": features}], [torch.full((4,), -1)])
    assert logs == {} and set(monitor.indicators(gather=False)) == {"embedding_std", "effective_rank"}


def test_one_class_data_warn_once_and_labelled_data_do_not():
    monitor, said = _monitor(_split(torch.zeros(20, dtype=torch.long), ["a", "b"]))
    assert len(said) == 1 and "one class" in said[0] and "meaningless" in said[0], said
    assert monitor.knn_due(1)
    _, said = _monitor(_split(torch.arange(20) % 2, ["a", "b"]))
    assert said == []
