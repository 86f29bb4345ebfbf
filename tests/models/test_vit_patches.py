"""The ViT patch-token API (selfsup.models.vit_patches): forward_patches, forward_visible, the fixed 2-D
sin-cos position embedding, and that an exported ViT keeps the API (selfsup.load_encoder)."""
import copy
import math

import pytest
import torch

from selfsup.core.errors import ConfigError
from selfsup.losses.mae import patchify, unpatchify
from selfsup.models.backbones import create_backbone
from selfsup.models.vit_patches import fix_sincos_pos_embed, freeze_patch_embed, sincos_2d

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = dict(img_size=8, patch_size=2, depth=2, embed_dim=32, num_heads=2)


def vit(name: str = "vit_tiny_patch16_224", **args):
    torch.manual_seed(0)
    return create_backbone(name, **{**TINY, **args}).eval()


def images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("args,prefix", [({}, 1), ({"reg_tokens": 2}, 3), ({"class_token": False, "global_pool": "avg"}, 0)])
def test_forward_patches_are_the_patch_tokens_after_the_final_norm(args, prefix):
    model = vit(**args)
    x = images()
    tokens = model.forward_features(x)
    assert tokens.shape == (3, prefix + 16, 32)
    assert torch.equal(model.forward_patches(x), tokens[:, prefix:])


def test_forward_visible_with_every_patch_is_forward_features():
    model, x = vit(), images()
    keep = torch.arange(16).expand(3, 16)
    assert torch.allclose(model.forward_visible(x, keep), model.forward_features(x), atol=1e-5)


def random_keep(n: int, num: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(16, generator=g)[:num].sort().values for _ in range(n)])


@pytest.mark.parametrize("name,args", [("vit_tiny_patch16_224", {}), ("vit_tiny_patch16_224", {"reg_tokens": 1}),
                                       ("vit_base_patch16_rope_reg1_gap_256", {})])
def test_forward_visible_sees_only_the_kept_patches_at_their_positions(name, args):
    """The dropped patches' pixels change nothing; permuting ``keep`` permutes the output tokens (positions
    travel with the patches: absolute embeddings, or Eva's rotary ones gathered for the kept patches)."""
    model, x = vit(name, **args), images()
    with torch.no_grad():  # positions that matter: sharp attention, no near-zero layer scale, large abs. positions
        for block in model.blocks:
            block.attn.qkv.weight.mul_(5)
        for name_, p in model.named_parameters():
            if name_.endswith(("gamma_1", "gamma_2", "gamma")):
                p.fill_(1.0)
        if model.pos_embed is not None:
            model.pos_embed.normal_()
    prefix = model.num_prefix_tokens
    keep = random_keep(3, 5, seed=2)
    out = model.forward_visible(x, keep)
    assert out.shape == (3, prefix + 5, 32)
    dropped = torch.ones(3, 16, dtype=torch.bool).scatter_(1, keep, False)  # [3, 16] True = not kept
    pixel_mask = dropped.view(3, 1, 4, 1, 4, 1).expand(3, 3, 4, 2, 4, 2).reshape(3, 3, 8, 8)
    noisy = torch.where(pixel_mask, torch.randn_like(x) * 10, x)
    assert torch.allclose(model.forward_visible(noisy, keep), out, atol=1e-5)
    perm = torch.tensor([3, 0, 4, 1, 2])
    shuffled = model.forward_visible(x, keep[:, perm])
    assert torch.allclose(shuffled[:, prefix:], out[:, prefix:][:, perm], atol=1e-5)
    assert torch.allclose(shuffled[:, :prefix], out[:, :prefix], atol=1e-5)
    place = torch.randperm(16, generator=torch.Generator().manual_seed(4))  # patch i moves to place[i]
    moved = unpatchify(torch.empty_like(patchify(x, 2)).index_copy_(1, place, patchify(x, 2)), 2, (4, 4), 3)
    other_places = model.forward_visible(moved, place[keep])  # the same patches, elsewhere
    assert not torch.allclose(other_places[:, prefix:], out[:, prefix:], atol=1e-2)


def test_api_survives_a_deep_copy_and_other_models_get_none():
    model = vit()
    clone = copy.deepcopy(model)
    assert clone.forward_patches.__self__ is clone and clone.forward_visible.__self__ is clone
    relpos = create_backbone("vit_relpos_small_patch16_224", **TINY)
    assert hasattr(relpos, "forward_patches") and not hasattr(relpos, "forward_visible")
    resnet = create_backbone("test_resnet")
    assert not hasattr(resnet, "forward_patches")
    with pytest.raises(ConfigError, match="no learned position embedding"):
        fix_sincos_pos_embed(resnet)
    with pytest.raises(ConfigError, match="no patch projection"):
        freeze_patch_embed(resnet)


def sincos_reference(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Per axis the transformer's sin / cos embedding (Vaswani et al. 2017) of dim / 2 values; column first."""
    quarter = dim // 4
    out = torch.empty(grid_h * grid_w, dim, dtype=torch.float64)
    for i in range(grid_h):
        for j in range(grid_w):
            for axis, pos in enumerate((j, i)):
                for k in range(quarter):
                    angle = pos / 10000 ** (k / quarter)
                    out[i * grid_w + j, axis * 2 * quarter + k] = math.sin(angle)
                    out[i * grid_w + j, axis * 2 * quarter + quarter + k] = math.cos(angle)
    return out


def test_sincos_2d_matches_the_formula_and_is_fixed_in_the_vit():
    assert torch.allclose(sincos_2d(16, 3, 5).double(), sincos_reference(16, 3, 5), atol=1e-6)
    with pytest.raises(ConfigError, match="divisible by 4"):
        sincos_2d(18, 2, 2)
    model = vit()
    fix_sincos_pos_embed(model)
    assert not model.pos_embed.requires_grad
    assert torch.equal(model.pos_embed[0, 0], torch.zeros(32))  # the class token's position
    assert torch.allclose(model.pos_embed[0, 1:], sincos_2d(32, 4, 4))


def test_an_exported_vit_keeps_the_patch_api(tmp_path):
    """Train a tiny ViT run, export it: selfsup.load_encoder gives an encoder with forward_patches and
    forward_visible, whose patch tokens are the trained ones."""
    from selfsup import load_encoder
    from selfsup.config import load_config
    from selfsup.runs.train import train

    cfg = load_config("mae-digits", ["data.name=synthetic", "data.num_samples=16", "data.image_size=8",
                                     "data.num_classes=2", "backbone.model_args.depth=1",
                                     "backbone.model_args.embed_dim=32", "backbone.model_args.num_heads=2",
                                     "method.decoder_dim=16", "method.decoder_depth=1", "method.decoder_heads=2",
                                     "trainer.batch_size=8", "trainer.max_steps=1", "eval.at_end=false",
                                     "eval.random_baseline=false", "run.plots=false", "run.tensorboard=false",
                                     f"run.dir={tmp_path / 'run'}"])
    train(cfg)
    encoder = load_encoder(tmp_path / "run")
    x = torch.randn(2, 3, 8, 8)  # synthetic images: RGB
    assert encoder.forward_patches(x).shape == (2, 16, 32)
    assert encoder.forward_visible(x, torch.arange(4).expand(2, 4)).shape == (2, 5, 32)
    trained = torch.load(sorted((tmp_path / "run" / "checkpoints").glob("*.pt"))[-1], weights_only=True)["model"]
    assert torch.equal(encoder.pos_embed, trained["backbone.pos_embed"])  # the run's fixed sin-cos positions
    assert torch.equal(encoder.blocks[0].attn.qkv.weight, trained["backbone.blocks.0.attn.qkv.weight"])
