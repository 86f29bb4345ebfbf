"""Shared tiny inputs of the dense-transfer tests: one exported resnet18 (small stem) and one scene dataset."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("pycocotools")


@pytest.fixture(scope="session")
def resnet_export(tmp_path_factory):
    from selfsup import create_backbone
    from selfsup.runs.export import export_encoder

    torch.manual_seed(0)
    return export_encoder(create_backbone("resnet18", small_stem=True), tmp_path_factory.mktemp("enc") / "encoder",
                          mean=[0.5] * 3, std=[0.25] * 3, input_size=(3, 32, 32))


@pytest.fixture(scope="session")
def scenes(tmp_path_factory):
    from selfsup.transfer.scenes import write_scenes

    # seed 3, 12 train images: every digit occurs in train (detection refuses a category without annotations)
    return write_scenes(tmp_path_factory.mktemp("scenes") / "s", seed=3, num_train=12, num_val=3, size=32)
