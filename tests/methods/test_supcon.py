"""SupCon (selfsup.methods.supcon): the step's loss is L^sup_out of its projections with the labels repeated
over the two views; with every label distinct the whole step is SimCLR's; it declares that it trains on labels,
so unlabelled data (a flat folder, labels -1) is refused in one line. The loss: tests/losses/test_supcon.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.cli import main
from selfsup.core.errors import ConfigError
from selfsup.data.augment import ViewMaker
from selfsup.losses import supcon_loss
from selfsup.methods import METHODS, create_method
from selfsup.models.backbones import create_backbone

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 16


def build(name: str = "supcon", **overrides):
    torch.manual_seed(0)
    backbone = create_backbone("test_resnet", small_stem=True)
    return create_method(name, backbone, image_size=SIZE, num_classes=4,
                         **{"proj_hidden_dim": 32, "proj_dim": 16, **overrides}).train()


def views(method, batch: int = 8):
    images = torch.randint(0, 256, (batch, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return ViewMaker(method.views, mean=(0.5,) * 3, std=(0.25,) * 3)(images, torch.Generator().manual_seed(2))


def test_declares_labels_and_takes_simclrs_two_views():
    method = build()
    assert METHODS.get("supcon").uses_labels
    assert [count for _, count in method.views] == [2]
    assert method.cfg.temperature == 0.1  # the paper's


def test_step_loss_is_supcon_of_the_projections_with_the_labels_of_both_views():
    method = build()
    v = views(method)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    out = method(v, labels, {})
    z = method.head(method.backbone(torch.cat(v)))
    torch.testing.assert_close(out["loss"], supcon_loss(z, torch.cat([labels, labels]), 0.1))
    assert out["features"].shape == (16, method.backbone.num_features) and out["embeddings"].shape == (16, 16)
    # the labels matter: other classes, another loss
    assert not torch.allclose(method(v, torch.zeros(8, dtype=torch.long), {})["loss"], out["loss"])


def test_with_distinct_labels_the_step_is_simclrs():
    supcon = build(temperature=0.2)
    simclr = build("simclr", temperature=0.2, proj_last_bn=False)  # the same seeded backbone and head weights
    v = views(supcon)
    got = supcon(v, torch.arange(8), {})["loss"]
    torch.testing.assert_close(got, simclr(v, torch.zeros(8), {})["loss"])


def test_single_linear_projection_and_unlabelled_data_refused(tmp_path, capsys):
    assert len(build(proj_layers=1).head) == 1  # the paper's other projection network: one linear layer
    with pytest.raises(ConfigError, match="method.name=supcon needs labelled data with at least 2 classes, got 0"):
        create_method("supcon", create_backbone("test_resnet", small_stem=True), image_size=SIZE)
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(8):
        Image.fromarray(np.full((16, 16, 3), 30 * i, np.uint8)).save(flat / f"{i}.png")
    assert main(["train", "supcon-digits", "data.name=imagefolder", f"data.train={flat}", "eval.at_end=false",
                 f"data.cache_dir={tmp_path / 'cache'}", f"run.dir={tmp_path / 'run'}", "backbone.name=test_resnet",
                 "trainer.batch_size=8", "trainer.max_steps=1", "run.plots=false", "run.tensorboard=false"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("selfsup: error:")]
    assert len(errors) == 1 and "method.name=supcon trains on labels" in errors[0], errors
    assert not (tmp_path / "run").exists()
