"""BYOL (Grill et al. 2020): no gradient through the target, the target an exact moving average, the
views (which Barlow Twins and VICReg share), the predictor's own lr scale. The loss:
tests/losses/test_noncontrastive.py."""
import pytest
import torch

from selfsup.config import load_config
from selfsup.core.errors import ConfigError
from selfsup.methods import create_method
from selfsup.models.backbones import create_backbone
from support.methods import build_small, check_no_gradient_through_the_target_branch, make_views, one_step_params

pytestmark = pytest.mark.usefixtures("seeded")


def test_no_gradient_flows_through_the_target_branch():
    check_no_gradient_through_the_target_branch("byol")


def test_byol_target_is_an_exact_moving_average_and_gets_no_gradient():
    method = build_small("byol", momentum_base=0.8).train()
    online = [*method.backbone.parameters(), *method.projector.parameters()]
    target = [*method.target_backbone.parameters(), *method.target_projector.parameters()]
    assert all(torch.equal(t, o) and not t.requires_grad for t, o in zip(target, online))
    expected = [p.detach().clone() for p in online]
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    taus = method.schedules(total_steps=4, steps_per_epoch=2)["ema_momentum"]
    assert taus[0] == 0.8 and all(taus[1:] > taus[:-1]) and taus[-1] < 1
    for step in range(4):
        values = {"lr": 0.5, "ema_momentum": float(taus[step])}
        method(make_views(method, seed=step), torch.zeros(8), values)["loss"].backward()
        assert all(t.grad is None for t in target)
        optimizer.step()
        optimizer.zero_grad()
        method.on_step_end(values)
        expected = [taus[step] * e + (1 - taus[step]) * o.detach() for e, o in zip(expected, online)]
        for t, e in zip(target, expected):
            assert torch.allclose(t, e, rtol=0, atol=1e-6)
    assert any(not torch.allclose(t, o) for t, o in zip(target, online)), "the target should lag the online network"
    for t_buf, o_buf in zip(method.target_backbone.buffers(), method.backbone.buffers()):
        assert torch.equal(t_buf, o_buf)  # BN statistics are copied


def test_views():
    byol_64 = create_method("byol", create_backbone("test_resnet", small_stem=True), image_size=64)
    (first, n1), (second, n2) = byol_64.views
    assert n1 == n2 == 1 and (first.blur_p, second.blur_p) == (1.0, 0.1)
    assert (first.solarize_p, second.solarize_p) == (0.0, 0.2)
    assert first.saturation == 0.2 and first.brightness == 0.4
    for name in ("barlowtwins", "vicreg"):  # BYOL's augmentations; no blur at 16 px
        (first, _), (second, _) = build_small(name).views
        assert (first.solarize_p, second.solarize_p, first.blur_p, second.blur_p) == (0.0, 0.2, 0.0, 0.0)
    ((spec, count),) = build_small("simsiam").views
    assert count == 2 and tuple(spec.crop_scale) == (0.2, 1.0) and spec.saturation == 0.4


# ----------------------------------------------------------------------------- through the trainer


def test_byol_predictor_lr_scale_multiplies_only_the_predictors_step(tmp_path):
    """One step from the same init and views: the predictor moves 4x as far, the rest exactly as far."""
    from selfsup.data import open_split
    from selfsup.engine.build import build_method

    plain, cfg = one_step_params(tmp_path / "x1", "byol-digits", "trainer.warmup_epochs=0")
    fast, _ = one_step_params(tmp_path / "x4", "byol-digits", "trainer.warmup_epochs=0", "method.predictor_lr_scale=4")
    start = build_method(cfg, open_split(cfg.data, "train", seed=cfg.trainer.seed)).state_dict()
    for key, w0 in start.items():
        if not w0.is_floating_point() or key.startswith("target_") or "running_" in key:
            continue
        if key.startswith("predictor."):
            assert (plain[key] - w0).abs().max() > 0, key
            torch.testing.assert_close(fast[key] - w0, 4 * (plain[key] - w0), rtol=1e-4, atol=1e-6)
        else:
            torch.testing.assert_close(fast[key], plain[key], rtol=0, atol=0)


def test_lr_scale_must_be_positive():
    with pytest.raises(ConfigError, match="predictor_lr_scale"):
        load_config("byol-digits", ["method.predictor_lr_scale=0"])
