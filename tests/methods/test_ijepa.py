"""I-JEPA (selfsup.methods.ijepa): the step's loss is ijepa_loss of the predictor's outputs against the target
encoder's patches, the context encoder never sees a target patch, no gradient reaches the target encoder,
masks are a function of (seed, step, micro-batch, process), state survives a round trip, and bad set-ups fail
in one line. The loss: tests/losses/test_ijepa.py; the mask generator: tests/data/test_masks.py."""
import pytest
import torch

import selfsup.methods.ijepa as ijepa_module
from selfsup.core.errors import ConfigError
from selfsup.losses.ijepa import ijepa_loss
from selfsup.methods import METHODS, create_method
from selfsup.models.backbones import create_backbone
from selfsup.models.vit_patches import forward_patches

pytestmark = pytest.mark.usefixtures("one_thread")
# 16 px, 2-px patches: an 8x8 grid, the paper's block scales give 2x3 .. 4x4 target blocks
VIT = dict(img_size=16, patch_size=2, depth=1, embed_dim=32, num_heads=2, in_chans=1, class_token=False,
           global_pool="avg", fc_norm=False)  # the paper: final norm on every token, then the mean
CPU = torch.device("cpu")


def build(**overrides):
    torch.manual_seed(0)
    backbone = create_backbone("vit_tiny_patch16_224", **VIT)
    return create_method("ijepa", backbone, image_size=16, **{**METHODS.get("ijepa").tiny, **overrides}).train()


def images(n=4, seed=0):
    return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


def values(method, step=0):
    return {k: float(v[step]) for k, v in method.schedules(10, 5).items()}


def test_step_is_ijepa_loss_of_the_predictions_on_the_target_blocks():
    jepa, x = build(), images()
    with torch.no_grad():  # a trained context encoder: no longer its EMA target encoder
        for p in jepa.backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = jepa([x], torch.zeros(4), values(jepa, 2))
    context, targets = jepa.masks(4, 2, 0, CPU)
    assert len(targets) == 4 and context.shape[0] == 4
    for t in targets:  # disjoint from the context, one block of equal size per image
        assert not (t.unsqueeze(2) == context.unsqueeze(1)).any()
        assert t.shape[0] == 4 and 2 <= t.shape[1] <= 16
    with torch.no_grad():
        h = forward_patches(jepa.target_encoder, x)
        latent = jepa.backbone.forward_visible(x, context)
        preds = [jepa.predictor(latent, context, t) for t in targets]
    expected = ijepa_loss(preds, [h[torch.arange(4)[:, None], t] for t in targets])
    torch.testing.assert_close(out["loss"].detach(), expected)
    assert out["features"].shape == (4, 32) and not out["features"].requires_grad


def test_the_context_encoder_never_sees_a_target_patch():
    jepa, x = build(), images()
    context, targets = jepa.masks(4, 0, 0, CPU)
    seen = torch.zeros(4, 64, dtype=torch.bool).scatter_(1, context, True)
    pixels = (~seen).view(4, 1, 8, 1, 8, 1).expand(4, 1, 8, 2, 8, 2).reshape(4, 1, 16, 16)
    other = torch.where(pixels, torch.randn_like(x) * 50, x)
    preds = [jepa.predictor(jepa.backbone.forward_visible(x, context), context, t) for t in targets]
    again = [jepa.predictor(jepa.backbone.forward_visible(other, context), context, t) for t in targets]
    for a, b in zip(preds, again):
        torch.testing.assert_close(a, b)


def test_gradients_never_reach_the_target_encoder_which_follows_the_ema():
    jepa = build()
    vals = values(jepa)
    jepa([images()], torch.zeros(4), vals)["loss"].backward()
    for name, p in jepa.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    assert all(not p.requires_grad for p in jepa.target_encoder.parameters())
    assert jepa.encoder is jepa.target_encoder and not jepa.backbone.pos_embed.requires_grad  # fixed sin-cos
    schedule = jepa.schedules(5, 5)["target_momentum"]
    assert schedule[0] == pytest.approx(0.996) and schedule[-1] == 1.0 and (schedule[1:] - schedule[:-1] > 0).all()
    target = [p.clone() for p in jepa.target_encoder.parameters()]
    with torch.no_grad():
        for p in jepa.backbone.parameters():
            p.add_(1.0)
    jepa.on_step_end({"target_momentum": 0.75})
    for old, new, src in zip(target, jepa.target_encoder.parameters(), jepa.backbone.parameters()):
        torch.testing.assert_close(new, 0.75 * old + 0.25 * src)


def test_masks_are_a_function_of_seed_step_micro_batch_and_process(monkeypatch):
    a, b = build(), build()
    a.masks(4, 7, 0, CPU)

    def same(u, v):
        return torch.equal(u[0], v[0]) and all(torch.equal(s, t) for s, t in zip(u[1], v[1]))

    assert same(a.masks(4, 3, 1, CPU), b.masks(4, 3, 1, CPU))
    assert not same(a.masks(4, 3, 0, CPU), a.masks(4, 3, 1, CPU))
    assert not same(a.masks(4, 3, 0, CPU), a.masks(4, 4, 0, CPU))
    single = a.masks(8, 3, 0, CPU)
    monkeypatch.setattr(ijepa_module, "world_size", lambda: 2)
    ranks = []
    for r in range(2):
        monkeypatch.setattr(ijepa_module, "rank", lambda r=r: r)
        ranks.append(a.masks(4, 3, 0, CPU))
    assert torch.equal(torch.cat([ranks[0][0], ranks[1][0]]), single[0])  # the global batch's context length
    for k in range(4):
        assert torch.equal(torch.cat([ranks[0][1][k], ranks[1][1][k]]), single[1][k])


def test_state_survives_a_round_trip(tmp_path):
    jepa = build()
    vals = values(jepa)
    jepa([images()], torch.zeros(4), vals)["loss"].backward()
    jepa.on_step_end(vals)
    torch.save(jepa.state_dict(), tmp_path / "s.pt")
    other = build()
    other.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    for (k, u), v in zip(jepa.state_dict().items(), other.state_dict().values()):
        assert torch.equal(u, v), k


def test_bad_set_ups_fail_in_one_line():
    resnet = create_backbone("test_resnet", in_chans=1)
    with pytest.raises(ConfigError, match=r"^method.name=ijepa needs a ViT backbone .*, not test_resnet$"):
        create_method("ijepa", resnet, image_size=16)
    vit = create_backbone("vit_tiny_patch16_224", **VIT)
    with pytest.raises(ConfigError, match="built for 16x16 images, the views are 32 px"):
        create_method("ijepa", vit, image_size=32, **METHODS.get("ijepa").tiny)
    with pytest.raises(ConfigError, match="predictor_dim=18 must be a multiple of method.predictor_heads=2 and of 4"):
        create_method("ijepa", vit, image_size=16, predictor_dim=18, predictor_heads=2, predictor_depth=1)
    with pytest.raises(ConfigError, match="target_scale"):
        create_method("ijepa", vit, image_size=16, target_scale=(0.5, 1.5))
