"""iBOT with DINOv2's options (selfsup.methods.ibot): the step's loss is DINO's [CLS] loss plus ibot_patch_loss
on the block-masked patches, the student never sees a masked patch, no gradient reaches the teacher, masks
are a function of (seed, step, micro-batch, process), centres and state survive a round trip, and bad
set-ups fail in one line. The losses: tests/losses/test_ibot.py, test_koleo.py, test_dino.py."""
import pytest
import torch

import selfsup.methods.ibot as ibot_module
from selfsup.core.errors import ConfigError
from selfsup.losses.dino import dino_loss
from selfsup.losses.ibot import ibot_patch_loss
from selfsup.losses.koleo import koleo_loss
from selfsup.losses.sinkhorn import sinkhorn_knopp
from selfsup.methods import METHODS, create_method
from selfsup.methods.ibot import forward_masked
from selfsup.models.backbones import create_backbone

pytestmark = pytest.mark.usefixtures("one_thread")
VIT = dict(img_size=8, patch_size=2, depth=1, embed_dim=32, num_heads=2, in_chans=1, dynamic_img_size=True)
TINY = {**METHODS.get("ibot").tiny, "mask_probability": 1.0}


def build(**overrides):
    torch.manual_seed(0)
    backbone = create_backbone("vit_tiny_patch16_224", **VIT)
    return create_method("ibot", backbone, image_size=8, **{**TINY, **overrides}).train()


def views(n=2, locals_=0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 1, 8, 8, generator=gen) for _ in range(n)] + \
           [torch.randn(4, 1, 4, 4, generator=gen) for _ in range(locals_)]


def values(method, step=0):
    return {k: float(v[step]) for k, v in method.schedules(10, 5).items()}


def teacher_outputs(method, x):
    tokens = method.teacher_backbone.forward_features(torch.cat(x[:2]))
    cls = method.teacher_head(method.teacher_backbone.forward_head(tokens, pre_logits=True))
    _, patch_head = method._patch_heads()
    return cls, patch_head(tokens[:, 1:].flatten(0, 1)).view(8, 16, -1)


def student_outputs(method, x, masks):
    tokens = forward_masked(method.backbone, torch.cat(x[:2]), torch.cat(masks), method.mask_token)
    features = method.backbone.forward_head(tokens, pre_logits=True)
    locals_ = [method.backbone(torch.cat(x[2:]))] if len(x) > 2 else []
    cls = method.head(torch.cat([features, *locals_])).chunk(len(x))
    head, _ = method._patch_heads()
    return list(cls), head(tokens[:, 1:].flatten(0, 1)).view(8, 16, -1), features


@pytest.mark.parametrize("shared_head", [True, False])
def test_step_is_dino_loss_plus_the_patch_loss_on_the_masked_patches(shared_head):
    ibot, x = build(shared_head=shared_head, num_local_crops=2, local_crop_size=4), views(2, 2)
    vals = values(ibot, 1)
    out = ibot(x, torch.zeros(4), vals)
    masks = ibot.masks(4, 1, 0, torch.device("cpu"))
    assert [m.shape for m in masks] == [(4, 16)] * 2 and all(m.any(1).all() for m in masks)  # every crop masked
    with torch.no_grad():
        t_cls, t_patch = teacher_outputs(ibot, x)
        s_cls, s_patch, _ = student_outputs(ibot, x, masks)
    cls = dino_loss(s_cls, list(t_cls.chunk(2)), ibot.center, 0.1, vals["teacher_temp"])
    q = torch.softmax((t_patch - ibot.patch_center) / vals["teacher_patch_temp"], -1)
    patch = ibot_patch_loss(list(s_patch.chunk(2)), list(q.chunk(2)), masks, 0.1)
    torch.testing.assert_close(out["cls_loss"], cls)
    torch.testing.assert_close(out["patch_loss"], patch)
    torch.testing.assert_close(out["loss"].detach(), cls + patch)


def test_dinov2_options_sinkhorn_centring_and_koleo():
    ibot, x = build(centering="sinkhorn", koleo_weight=0.1, shared_head=False), views()
    vals = values(ibot)
    out = ibot(x, torch.zeros(4), vals)
    masks = ibot.masks(4, 0, 0, torch.device("cpu"))
    mask = torch.cat(masks)
    with torch.no_grad():
        t_cls, t_patch = teacher_outputs(ibot, x)
        s_cls, s_patch, features = student_outputs(ibot, x, masks)
    q_cls = sinkhorn_knopp(t_cls, vals["teacher_temp"], 3)
    cls = -(q_cls * torch.log_softmax(torch.cat([s_cls[1], s_cls[0]]) / 0.1, -1)).sum(-1).mean()  # crossed pairs
    q = torch.zeros_like(t_patch)
    q[mask] = sinkhorn_knopp(t_patch[mask], vals["teacher_patch_temp"], 3)
    patch = ibot_patch_loss(list(s_patch.chunk(2)), list(q.chunk(2)), masks, 0.1)
    koleo = koleo_loss(features[:4]) + koleo_loss(features[4:])
    torch.testing.assert_close(out["cls_loss"], cls)
    torch.testing.assert_close(out["patch_loss"], patch)
    torch.testing.assert_close(out["koleo"], koleo)
    torch.testing.assert_close(out["loss"].detach(), cls + patch + 0.1 * koleo)
    centre = ibot.center.clone()
    ibot.on_step_end(vals)
    assert torch.equal(ibot.center, centre) and not ibot.patch_center.any()  # Sinkhorn: no running centre


def test_the_student_never_sees_a_masked_patch_and_the_teacher_sees_all():
    ibot = build()
    x = views()
    masks = ibot.masks(4, 3, 0, torch.device("cpu"))
    pixels = torch.cat(masks).view(8, 1, 4, 1, 4, 1).expand(8, 1, 4, 2, 4, 2).reshape(8, 1, 8, 8)
    both = torch.cat(x)
    other = torch.where(pixels, torch.randn_like(both) * 50, both)
    a = forward_masked(ibot.backbone, both, torch.cat(masks), ibot.mask_token)
    torch.testing.assert_close(a, forward_masked(ibot.backbone, other, torch.cat(masks), ibot.mask_token))
    assert not torch.allclose(ibot.teacher_backbone.forward_features(both), ibot.teacher_backbone.forward_features(other))


@pytest.mark.parametrize("overrides", [{}, {"shared_head": False, "centering": "sinkhorn", "koleo_weight": 0.1}])
def test_gradients_never_reach_the_teacher_and_centres_and_ema_move(overrides):
    ibot = build(**overrides)
    vals = values(ibot)
    vals["freeze_last_layer"] = 0.0
    ibot(views(), torch.zeros(4), vals)["loss"].backward()
    ibot.on_after_backward(vals)
    for name, p in ibot.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
        assert not (name.startswith("teacher") and p.requires_grad), name
    assert ibot.mask_token.grad.abs().sum() > 0
    before = {k: v.clone() for k, v in ibot.state_dict().items() if k.startswith("teacher")}
    with torch.no_grad():
        for p in ibot.parameters():
            if p.requires_grad:
                p.add_(0.1)
    ibot.on_step_end(vals)
    moved = [k for k, v in ibot.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert any(k.startswith("teacher_backbone") for k in moved) and any(k.startswith("teacher_head") for k in moved)
    if overrides:
        assert any(k.startswith("teacher_patch_head") for k in moved)
    else:
        assert ibot.patch_center.abs().sum() > 0
    assert ibot.encoder is ibot.teacher_backbone


def test_masks_are_a_function_of_seed_step_micro_batch_and_process(monkeypatch):
    a, b = build(), build()
    cpu = torch.device("cpu")
    a.masks(4, 5, 0, cpu)
    assert all(torch.equal(u, v) for u, v in zip(a.masks(4, 3, 1, cpu), b.masks(4, 3, 1, cpu)))
    assert not torch.equal(torch.cat(a.masks(4, 3, 0, cpu)), torch.cat(a.masks(4, 3, 1, cpu)))
    assert not torch.equal(torch.cat(a.masks(4, 3, 0, cpu)), torch.cat(a.masks(4, 4, 0, cpu)))
    half = build(mask_probability=0.5, mask_ratio=(0.2, 0.3))
    drawn = torch.cat(half.masks(64, 0, 0, cpu))
    share = drawn.float().mean(1)
    assert 0.3 < (share == 0).float().mean() < 0.7 and share.max() <= round(0.3 * 16) / 16  # target round(r N)
    single = a.masks(8, 3, 0, cpu)
    monkeypatch.setattr(ibot_module, "world_size", lambda: 2)
    ranks = []
    for r in range(2):
        monkeypatch.setattr(ibot_module, "rank", lambda r=r: r)
        ranks.append(a.masks(4, 3, 0, cpu))
    for v in range(2):
        assert torch.equal(torch.cat([ranks[0][v], ranks[1][v]]), single[v])


def test_state_survives_a_round_trip(tmp_path):
    ibot = build(shared_head=False)
    vals = values(ibot)
    ibot(views(), torch.zeros(4), vals)["loss"].backward()
    ibot.on_step_end(vals)
    torch.save(ibot.state_dict(), tmp_path / "s.pt")
    other = build(shared_head=False)
    other.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    for (k, u), v in zip(ibot.state_dict().items(), other.state_dict().values()):
        assert torch.equal(u, v), k
    assert "patch_center" in ibot.state_dict() and "mask_token" in ibot.state_dict()


def test_bad_set_ups_fail_in_one_line():
    resnet = create_backbone("test_resnet", in_chans=1)
    with pytest.raises(ConfigError, match=r"^method.name=ibot needs a ViT backbone \(a timm ViT.*not test_resnet$"):
        create_method("ibot", resnet, image_size=8)
    vit = create_backbone("vit_tiny_patch16_224", **{**VIT, "dynamic_img_size": False})
    with pytest.raises(ConfigError, match=r"built for 8x8 images, the views are 16 px"):
        create_method("ibot", vit, image_size=16, **TINY)
    with pytest.raises(ConfigError, match=r"patch_out_dim=32 differs from method.out_dim=64: .*method.shared_head=false$"):
        create_method("ibot", vit, image_size=8, **{**TINY, "patch_out_dim": 32})
    with pytest.raises(ConfigError, match="centering"):
        create_method("ibot", vit, image_size=8, **{**TINY, "centering": "mean"})
    with pytest.raises(ConfigError, match="local crops of 4 px"):
        create_method("ibot", vit, image_size=8, **{**TINY, "num_local_crops": 2, "local_crop_size": 4})
