"""``eval.pool`` (selfsup.evaluation.features): ``cls`` is the ViT's own pooled feature, ``mean`` the mean of
its patch tokens (forward_patches); the two differ, each is cached under its own key, and evaluate() and a
recipe's ``eval.pool`` reach the extraction."""
from __future__ import annotations

import pytest
import torch

from selfsup.core.errors import ConfigError
from selfsup.evaluation.features import cached_features, extract_features
from selfsup.models.backbones import create_backbone
from support import MEAN, STD, count_extractions

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vit():
    torch.manual_seed(0)
    return create_backbone("vit_tiny_patch16_224", img_size=8, patch_size=2, depth=1, embed_dim=32, num_heads=2)


def uint8_images(n: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def normalised(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_mean_pool_is_the_mean_patch_token_and_differs_from_cls():
    vit, images = tiny_vit().eval(), uint8_images()
    cls = extract_features(vit, images, MEAN, STD, batch_size=2, progress=False)
    mean = extract_features(vit, images, MEAN, STD, batch_size=2, progress=False, pool="mean")
    with torch.no_grad():
        x = normalised(images)
        torch.testing.assert_close(mean, vit.forward_patches(x).mean(1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cls, vit(x), atol=1e-5, rtol=1e-5)  # timm's pooled feature: the class token
        torch.testing.assert_close(cls, vit.forward_features(x)[:, 0], atol=1e-5, rtol=1e-5)
    assert mean.shape == cls.shape == (5, 32)
    assert (mean - cls).abs().max() > 0.1


def test_mean_pool_on_an_encoder_without_patch_tokens_or_an_unknown_pool_is_one_line():
    resnet = create_backbone("test_resnet")
    with pytest.raises(ConfigError, match=r"^eval.pool=mean averages a ViT's patch tokens; test_resnet has none"):
        extract_features(resnet, uint8_images(), MEAN, STD, progress=False, pool="mean")
    with pytest.raises(ConfigError, match=r"^eval.pool='max': choose one of cls, mean$"):
        extract_features(tiny_vit(), uint8_images(), MEAN, STD, progress=False, pool="max")


def test_each_pool_is_cached_under_its_own_key(monkeypatch, tmp_path):
    calls = count_extractions(monkeypatch)
    vit, images = tiny_vit(), uint8_images(6)
    kwargs = dict(cache_dir=tmp_path, progress=False, dataset_id="x")
    first = {pool: cached_features(vit, images, MEAN, STD, pool=pool, **kwargs) for pool in ("cls", "mean")}
    again = {pool: cached_features(vit, images, MEAN, STD, pool=pool, **kwargs) for pool in ("cls", "mean")}
    assert calls == [6, 6]  # one extraction per pool, then both from the cache
    for pool in first:
        assert torch.equal(first[pool], again[pool])
    assert not torch.equal(first["cls"], first["mean"])


def test_evaluate_and_a_recipe_pass_eval_pool_to_the_extraction(monkeypatch):
    import selfsup.evaluation.features as features_module
    from selfsup.config import EvalConfig, load_config
    from selfsup.data import ImageDataset
    from selfsup.evaluation.protocols import evaluate

    assert load_config("mae-digits", ["eval.pool=mean"]).eval.pool == "mean"
    with pytest.raises(ConfigError, match="eval.pool"):
        load_config("mae-digits", ["eval.pool=max"])
    pools = []
    real = features_module.extract_features
    monkeypatch.setattr(features_module, "extract_features",
                        lambda *a, **k: pools.append(k.get("pool")) or real(*a, **k))
    labels = torch.arange(12) % 2
    split = ImageDataset(uint8_images(12), labels, ["a", "b"], MEAN, STD)
    evaluate(tiny_vit(), split, split, EvalConfig(knn_k=[3], pool="mean"), protocols=["knn"], progress=False)
    assert pools == ["mean", "mean"]
