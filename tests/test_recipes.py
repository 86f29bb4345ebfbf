"""Every shipped recipe loads, validates and trains: one step on synthetic images of the recipe's size.

The recipes' models, heads, views and optimiser settings are kept; only the data (synthetic, 16
images), the batch (8), the run length (1 step) and, for the ResNet recipes, the backbone (timm's
tiny ``test_resnet``) are swapped, so a recipe with a bad key, an unknown optimiser option or views
that do not fit its image size fails here rather than an hour into a user's run. The 96-px STL-10
recipes (DINO's multi-crop, jigsaw's 64-px puzzles) run on 96-px synthetic images.
"""
import json
import math

import pytest

from selfsup.config import RECIPES_DIR, load_config
from selfsup.runs.train import train

RECIPES = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
NATIVE_SIZE = {"digits": 8, "cifar10": 32, "cifar100": 32, "stl10": 96}


def test_every_method_has_a_digits_and_a_cifar10_recipe():
    from selfsup.methods.factory import METHODS

    missing = [f"{m}-{d}" for m in METHODS.names() for d in ("digits", "cifar10") if f"{m}-{d}" not in RECIPES]
    assert not missing
    assert {"dino-stl10", "jigsaw-stl10", "swav-stl10"} <= set(RECIPES)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_trains_one_step(recipe, tmp_path):
    cfg = load_config(recipe, [])
    size = cfg.data.image_size or NATIVE_SIZE[cfg.data.name]
    overrides = ["data.name=synthetic", "data.num_samples=16", "data.num_classes=4", f"data.image_size={size}",
                 "trainer.batch_size=8", "trainer.max_steps=1", "trainer.log_every=1", "eval.at_end=false",
                 "eval.random_baseline=false", f"run.dir={tmp_path}"]
    if cfg.backbone.name.startswith("resnet"):
        overrides.append("backbone.name=test_resnet")
    cfg = load_config(recipe, overrides)
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] and math.isfinite(rows[0]["loss"])
    assert list((tmp_path / "checkpoints").glob("*.pt"))
