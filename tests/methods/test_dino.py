"""DINO (Caron et al. 2021, arXiv:2104.14294): centre / EMA / last-layer-freeze rules over several steps,
multi-crop, ViT local crops. The loss itself: tests/losses/test_dino.py."""
import math
import threading

import pytest
import torch

from selfsup.core.errors import ConfigError
from selfsup.data.augment import ViewMaker
from selfsup.methods import create_method
from selfsup.methods import dino as dino_module
from selfsup.models.backbones import create_backbone

SIZE, BATCH, LOCAL = 16, 4, 3


def build(**overrides):
    torch.manual_seed(0)
    backbone = create_backbone("test_resnet", small_stem=True)
    cfg = {"out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8, "num_local_crops": LOCAL, **overrides}
    return create_method("dino", backbone, image_size=SIZE, **cfg).train()


def make_views(method, seed: int, size: int = SIZE):
    images = torch.randint(0, 256, (BATCH, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return ViewMaker(method.views, mean=(0.5,) * 3, std=(0.25,) * 3)(images, torch.Generator().manual_seed(seed))


def values_at(method, step: int, total: int = 20, per_epoch: int = 5) -> dict[str, float]:
    sched = method.schedules(total_steps=total, steps_per_epoch=per_epoch)
    return {"lr": 0.1, "weight_decay": 0.0, **{k: float(v[step]) for k, v in sched.items()}}


def teacher_pairs(method):
    return list(zip(method.teacher_backbone.parameters(), method.backbone.parameters())) + list(
        zip(method.teacher_head.parameters(), method.head.parameters()))


def test_views_are_two_global_crops_then_local_crops():
    method = build(local_crop_size=8, blur=True)
    views = make_views(method, 0)
    assert len(views) == 2 + LOCAL
    assert [v.shape[-1] for v in views] == [SIZE, SIZE] + [8] * LOCAL
    (g1, n1), (g2, n2), (loc, n3) = method.views
    assert (n1, n2, n3) == (1, 1, LOCAL)
    assert (g1.blur_p, g2.blur_p, loc.blur_p, g1.solarize_p, g2.solarize_p, loc.solarize_p) == (1.0, 0.1, 0.5, 0, 0.2, 0)
    assert tuple(loc.crop_scale) == (0.05, 0.4) and tuple(g1.crop_scale) == (0.4, 1.0)
    assert (g1.brightness, g1.contrast, g1.saturation, g1.hue, g1.jitter_p, g1.grayscale_p) == (0.4, 0.4, 0.2, 0.1, 0.8, 0.2)
    assert len(build(num_local_crops=0).views) == 2


def test_schedules_warm_the_teacher_temperature_and_raise_the_momentum():
    method = build(warmup_teacher_temp_epochs=2, freeze_last_layer_epochs=1)
    sched = method.schedules(total_steps=20, steps_per_epoch=5)
    temp = sched["teacher_temp"]
    assert temp[0] == pytest.approx(0.04) and (temp[10:] == 0.07).all() and (temp[1:10] > temp[:9]).all()
    mom = sched["teacher_momentum"]
    assert mom[0] == pytest.approx(0.996) and (mom[1:] >= mom[:-1]).all() and mom[-1] > 0.9999
    assert sched["freeze_last_layer"].tolist() == [1.0] * 5 + [0.0] * 15


def test_backbone_runs_once_per_resolution():
    method = build()
    calls = {"student": [], "teacher": []}
    method.backbone.register_forward_hook(lambda m, i, o: calls["student"].append(tuple(i[0].shape)))
    method.teacher_backbone.register_forward_hook(lambda m, i, o: calls["teacher"].append(tuple(i[0].shape)))
    method(make_views(method, 0), torch.zeros(BATCH), values_at(method, 0))
    local = method.local_size
    assert calls["student"] == [(2 * BATCH, 3, SIZE, SIZE), (LOCAL * BATCH, 3, local, local)]
    assert calls["teacher"] == [(2 * BATCH, 3, SIZE, SIZE)]


def test_centre_teacher_ema_and_last_layer_freeze_over_several_steps():
    method = build(center_momentum=0.9, momentum_teacher=0.9)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    last = method.head.last_layer
    center = torch.zeros(1, 32)
    for step in [0, 4, 5]:  # the first epoch (steps 0-4) freezes the last layer
        views, values = make_views(method, step), values_at(method, step)
        with torch.no_grad():
            t = method.teacher_head(method.teacher_backbone(torch.cat(views[:2])))
        out = method(views, torch.zeros(BATCH), values)
        assert set(out) == {"loss", "teacher_entropy", "kl"} and all(v.ndim == 0 for v in out.values())
        out["loss"].backward()
        method.on_after_backward(values)
        assert all(p.grad is None for p in method.teacher_backbone.parameters())
        assert all(p.grad is None for p in method.teacher_head.parameters())
        frozen = [p.grad is None or p.grad.abs().sum() == 0 for p in last.parameters() if p.requires_grad]
        assert all(frozen) == (step < 5), step
        assert method.head.mlp[0].weight.grad.abs().sum() > 0
        opt.step()
        opt.zero_grad(set_to_none=True)
        before = [(a.clone(), b.clone()) for a, b in teacher_pairs(method)]
        method.on_step_end(values)
        m = values["teacher_momentum"]
        for (t_old, s), (t_new, _) in zip(before, teacher_pairs(method)):
            torch.testing.assert_close(t_new, m * t_old + (1 - m) * s, rtol=1e-6, atol=1e-6)
        center = 0.9 * center + 0.1 * t.mean(dim=0, keepdim=True)
        torch.testing.assert_close(method.center, center, rtol=0, atol=1e-6)
        torch.testing.assert_close(last.weight.norm(dim=1), torch.ones(32))  # gain fixed to 1
    assert method.encoder is method.teacher_backbone


def test_logged_kl_is_the_mean_pairwise_kl():
    method = build().eval()  # BN on running statistics: per-view reference forwards match the batched ones
    views, values = make_views(method, 3), values_at(method, 0)
    method.center.normal_()
    out = method(views, torch.zeros(BATCH), values)
    with torch.no_grad():
        t = method.teacher_head(method.teacher_backbone(torch.cat(views[:2]))).chunk(2)
        s = method.head(torch.cat([method.backbone(v) for v in views])).chunk(len(views))
    temp, c = values["teacher_temp"], method.center
    kls = []
    for i in range(2):
        q = torch.softmax((t[i] - c) / temp, -1)
        for j in range(len(views)):
            if i != j:
                kls.append((torch.special.xlogy(q, q) - q * torch.log_softmax(s[j] / 0.1, -1)).sum(-1).mean())
    assert abs(float(out["kl"]) - float(torch.stack(kls).mean())) < 1e-4
    assert 0 < float(out["teacher_entropy"]) <= math.log(32) + 1e-6


def test_learnable_gain_when_the_last_layer_is_not_normalised():
    method = build(norm_last_layer=False)
    gain = method.head.last_layer.parametrizations.weight.original0
    assert gain.requires_grad and not method.teacher_head.last_layer.parametrizations.weight.original0.requires_grad


def test_vit_with_smaller_local_crops_runs():
    torch.manual_seed(0)
    vit = create_backbone("test_vit", img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                          dynamic_img_size=True)
    method = create_method("dino", vit, image_size=32, out_dim=32, hidden_dim=16, bottleneck_dim=8, num_local_crops=2).train()
    views = make_views(method, 0, size=32)
    assert views[-1].shape[-1] == 16
    out = method(views, torch.zeros(BATCH), values_at(method, 0))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and method.backbone.pos_embed.grad.abs().sum() > 0
    assert method.encoder(torch.rand(2, 3, 16, 16)).shape == (2, vit.num_features)
    fixed = create_backbone("test_vit", img_size=32, patch_size=4, embed_dim=32, depth=1, num_heads=2, dynamic_img_size=False)
    with pytest.raises(ConfigError, match="dynamic_img_size"):
        create_method("dino", fixed, image_size=32, num_local_crops=2)


def test_centre_over_two_ranks_equals_one_process_on_the_global_batch(monkeypatch):
    """Two ranks as two threads whose all_reduce_mean averages through a barrier (a real gloo run
    would spend ~20 s importing the package twice on a 2-core machine)."""
    teacher = torch.randn(3, 8, 32)
    single = build()
    for step in range(3):
        single._stash_center(teacher[step])
        single.on_step_end({"teacher_momentum": 1.0})

    barrier, slots = threading.Barrier(2), {}

    def fake_all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
        slots[threading.current_thread().name] = x.clone()
        barrier.wait()
        out = (slots["rank0"] + slots["rank1"]) / 2
        barrier.wait()  # both read before the next step overwrites a slot
        return out

    monkeypatch.setattr(dino_module, "all_reduce_mean", fake_all_reduce_mean)
    ranks = [build(), build()]

    def run(rank: int) -> None:
        for step in range(3):
            ranks[rank]._stash_center(teacher[step].chunk(2)[rank])
            ranks[rank].on_step_end({"teacher_momentum": 1.0})

    threads = [threading.Thread(target=run, args=(r,), name=f"rank{r}") for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for method in ranks:
        torch.testing.assert_close(method.center, single.center, rtol=0, atol=1e-6)
