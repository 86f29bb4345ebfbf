"""MoCo v3 (Chen, Xie, He 2021, arXiv:2104.02057): the step's loss is mocov3_loss of the predictor's queries
against the momentum encoder's keys, the momentum update and its cosine schedule, the ViT tricks (frozen
random patch projection, fixed sin-cos positions) and ResNets. The loss: tests/losses/test_mocov3.py."""
import pytest
import torch

from selfsup.core.errors import ConfigError
from selfsup.losses.mocov3 import mocov3_loss
from selfsup.methods import METHODS, create_method
from selfsup.models.backbones import create_backbone
from selfsup.models.heads import ProjectionHead

pytestmark = pytest.mark.usefixtures("one_thread")
VIT = dict(img_size=8, patch_size=2, depth=1, embed_dim=32, num_heads=2)


def build(backbone: str = "vit", **overrides):
    torch.manual_seed(0)
    net = create_backbone("vit_tiny_patch16_224", **VIT) if backbone == "vit" else create_backbone("test_resnet",
                                                                                                     small_stem=True)
    return create_method("mocov3", net, image_size=8, **{**METHODS.get("mocov3").tiny, **overrides}).train()


def views(batch: int = 6, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 8, 8, generator=gen) for _ in range(2)]


def test_heads_are_the_papers():
    """Projector: 3 layers, BN after each (the last without affine parameters); predictor: 2 layers, BN too."""
    m = build()
    linears = [l for l in m.projector if isinstance(l, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(32, 32), (32, 32), (32, 16)]
    assert all(l.bias is None for l in linears)
    assert isinstance(m.projector[-1], torch.nn.BatchNorm1d) and not m.projector[-1].affine
    assert isinstance(m.predictor, ProjectionHead) and isinstance(m.predictor[-1], torch.nn.BatchNorm1d)
    assert not isinstance(build(pred_last_bn=False).predictor[-1], torch.nn.BatchNorm1d)
    assert sum(isinstance(l, torch.nn.Linear) for l in build(proj_layers=2).projector) == 2


@pytest.mark.parametrize("backbone", ["vit", "resnet"])
def test_step_loss_and_momentum_update_follow_algorithm_1(backbone):
    m = build(backbone)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    schedule = m.schedules(total_steps=6, steps_per_epoch=3)["ema_momentum"]
    assert schedule[0] == pytest.approx(0.99) and all(schedule[1:] >= schedule[:-1]) and schedule[-1] < 1
    for step in range(2):
        x1, x2 = views(seed=step)
        with torch.no_grad():
            k1, k2 = (m.key_projector(m.key_backbone(v)) for v in (x1, x2))
        out = m([x1, x2], torch.zeros(6), {"ema_momentum": float(schedule[step])})
        q1, q2 = (m.predictor(m.projector(m.backbone(v))) for v in (x1, x2))
        torch.testing.assert_close(out["loss"], mocov3_loss(q1, q2, k1, k2, 0.2), rtol=1e-5, atol=1e-6)
        assert out["features"].shape == (12, m.backbone.num_features) and out["embeddings"].shape == (12, 16)
        opt.zero_grad()
        out["loss"].backward()
        assert all(p.grad is None for p in [*m.key_backbone.parameters(), *m.key_projector.parameters()])
        before = [p.clone() for p in [*m.key_backbone.parameters(), *m.key_projector.parameters()]]
        opt.step()
        mom = float(schedule[step])
        m.on_step_end({"ema_momentum": mom})
        for old, new, src in zip(before, [*m.key_backbone.parameters(), *m.key_projector.parameters()],
                                 [*m.backbone.parameters(), *m.projector.parameters()]):
            torch.testing.assert_close(new, mom * old + (1 - mom) * src, rtol=1e-6, atol=1e-7)


def test_a_vit_keeps_its_random_patch_projection_and_fixed_positions():
    m = build()
    proj = m.backbone.patch_embed.proj
    start = [p.clone() for p in proj.parameters()] + [m.backbone.pos_embed.clone()]
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=0.1)
    m(views(), torch.zeros(6), {"ema_momentum": 0.99})["loss"].backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(start, [*proj.parameters(), m.backbone.pos_embed]))
    assert m.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    learned = build(freeze_patch_embed=False, fixed_pos_embed=False)
    assert learned.backbone.patch_embed.proj.weight.requires_grad and learned.backbone.pos_embed.requires_grad


def test_a_resnet_trains_and_the_vit_options_are_refused_on_it_in_one_line():
    resnet = build("resnet")
    assert all(p.requires_grad for p in resnet.backbone.parameters())  # defaults: nothing frozen on a ResNet
    for key in ("freeze_patch_embed", "fixed_pos_embed"):
        with pytest.raises(ConfigError, match=rf"^method.{key}=true needs a ViT backbone .*, not test_resnet$"):
            build("resnet", **{key: True})
