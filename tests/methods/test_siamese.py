"""Siamese metric learning (selfsup.methods.siamese): one network with shared weights embeds both views; the
step's loss is the triplet or contrastive loss of the (normalised) embeddings; where positives come from (labels,
or the two views of one image for unlabelled data, image indices unique over processes); each paper's distance
by default; a flat folder of unlabelled images pretrains with view positives. Losses: tests/losses/test_metric.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from selfsup.cli import main
from selfsup.core.errors import ConfigError
from selfsup.data.augment import ViewMaker
from selfsup.losses import contrastive_margin_loss, triplet_loss
from selfsup.methods import METHODS, create_method
from selfsup.models.backbones import create_backbone

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 16
LABELS = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])


def build(num_classes: int = 4, **overrides):
    torch.manual_seed(0)
    backbone = create_backbone("test_resnet", small_stem=True)
    return create_method("siamese", backbone, image_size=SIZE, num_classes=num_classes,
                         **{**METHODS.get("siamese").tiny, **overrides}).train()


def views(method, batch: int = 8):
    images = torch.randint(0, 256, (batch, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return ViewMaker(method.views, mean=(0.5,) * 3, std=(0.25,) * 3)(images, torch.Generator().manual_seed(2))


def embeddings(method, v, normalize=True):
    e = method.head(method.backbone(torch.cat(v)))
    return F.normalize(e, dim=1) if normalize else e


@pytest.mark.parametrize("mining", ["all", "hard", "semihard"])
def test_triplet_step_is_facenets_loss_on_unit_embeddings_with_label_positives(mining):
    method = build(mining=mining, margin=0.5)
    assert method.positives == "labels" and method.distance == "squared"  # FaceNet's distance by default
    v = views(method)
    out = method(v, LABELS, {})
    e = embeddings(method, v)
    torch.testing.assert_close(out["loss"], triplet_loss(e, torch.cat([LABELS, LABELS]), 0.5, "squared", mining))
    torch.testing.assert_close(out["embeddings"].norm(dim=1), torch.ones(16))
    assert out["loss"] > 0


def test_contrastive_step_is_hadsells_loss_on_raw_embeddings():
    method = build(loss="contrastive", margin=1.5, normalize=False)
    assert method.distance == "euclidean"  # Hadsell's distance by default
    v = views(method)
    e = embeddings(method, v, normalize=False)
    want = contrastive_margin_loss(e, torch.cat([LABELS, LABELS]), 1.5, "euclidean")
    torch.testing.assert_close(method(v, LABELS, {})["loss"], want)
    squared = build(loss="contrastive", margin=1.5, normalize=False, distance="squared")
    assert squared.distance == "squared"


def test_the_twins_share_every_weight():
    """Both views pass through the same modules: swapping them permutes the pairs, the loss stays."""
    method = build()
    v = views(method)
    torch.testing.assert_close(method(v, LABELS, {})["loss"], method(v[::-1], LABELS, {})["loss"])
    assert [n for n, _ in method.named_children()] == ["backbone", "head"]


def test_positives_from_views_when_the_data_has_no_labels():
    unlabelled = build(num_classes=0)
    assert unlabelled.positives == "views"
    v = views(unlabelled)
    out = unlabelled(v, torch.full((8,), -1), {})
    ids = torch.arange(8)
    want = triplet_loss(embeddings(unlabelled, v), torch.cat([ids, ids]), 0.2, "squared", "semihard")
    torch.testing.assert_close(out["loss"], want)
    # views on labelled data: the labels are ignored
    forced = build(positives="views")
    torch.testing.assert_close(forced(v, LABELS, {})["loss"], forced(v, torch.zeros(8, dtype=torch.long), {})["loss"])
    with pytest.raises(ConfigError, match="method.positives=labels needs labelled data with at least 2 classes, got 0"):
        build(num_classes=0, positives="labels")


def test_view_positives_are_unique_over_processes(monkeypatch):
    import selfsup.methods.siamese as siamese

    method = build(positives="views")
    monkeypatch.setattr(siamese, "rank", lambda: 1)
    assert method.pair_labels(torch.full((4,), -1)).tolist() == [4, 5, 6, 7, 4, 5, 6, 7]


def test_a_flat_folder_pretrains_with_view_positives(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(flat / f"{i}.png")
    assert main(["train", "siamese-digits", "data.name=imagefolder", f"data.train={flat}", "eval.at_end=false",
                 f"data.cache_dir={tmp_path / 'cache'}", f"run.dir={tmp_path / 'run'}", "backbone.name=test_resnet",
                 "method.embed_dim=16", "trainer.batch_size=8", "trainer.max_steps=2", "trainer.log_every=1",
                 "run.plots=false", "run.tensorboard=false", "eval.random_baseline=false"]) == 0
    assert (tmp_path / "run" / "encoder" / "model.safetensors").is_file()
