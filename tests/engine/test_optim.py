"""Optimisers and parameter groups (selfsup.engine.optim): no weight decay on biases and norms, lr rules,
LARS's trust ratio."""
import pytest
import torch

from selfsup.config import load_config
from selfsup.core.errors import ConfigError


def test_weight_decay_skips_biases_and_norms():
    from selfsup.engine.optim import param_groups

    groups = param_groups(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)), 0.1)
    assert [p.ndim for p in groups[0]["params"]] == [2] and groups[0]["weight_decay"] == 0.1
    assert all(p.ndim == 1 for p in groups[1]["params"]) and groups[1]["weight_decay"] == 0.0


def test_lr_rules_put_a_submodule_in_its_own_groups():
    from selfsup.engine.optim import param_groups
    from selfsup.methods.base import LrRule

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    groups = param_groups(model, 0.1, {"2": LrRule(scale=10.0)})
    assert [(g["lr_scale"], g["weight_decay"], len(g["params"])) for g in groups] == [
        (1.0, 0.1, 1), (1.0, 0.0, 3), (10.0, 0.1, 1), (10.0, 0.0, 1)]
    assert groups[2]["params"][0] is model[2].weight and groups[3]["params"][0] is model[2].bias
    with pytest.raises(ConfigError, match="must be > 0"):
        param_groups(model, 0.1, {"2": LrRule(scale=0.0)})


@pytest.mark.parametrize("clip", [False, True])
def test_lars_step_follows_the_trust_ratio_with_the_configured_eta(clip):
    """One LARS step from rest: w - lr * r * (g + wd w), r = eta ||w|| / (||g|| + wd ||w||) (You et
    al. 2017); LARC's clip makes it w - min(lr, r) * (g + wd w). Biases (no decay) get plain SGD."""
    from selfsup.engine.optim import create_optimizer

    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 3)
    w0, b0 = layer.weight.detach().clone(), layer.bias.detach().clone()
    layer(torch.randn(7, 5)).pow(2).sum().backward()
    g, gb = layer.weight.grad.clone(), layer.bias.grad.clone()
    cfg = load_config("simclr-digits", ["trainer.optimizer=lars", "trainer.weight_decay=0.01",
                                         "trainer.lars_trust_coefficient=0.02",
                                         f"trainer.lars_trust_clip={str(clip).lower()}"]).trainer
    lr = 0.5
    create_optimizer(layer, cfg, lr).step()
    ratio = 0.02 * w0.norm() / (g.norm() + 0.01 * w0.norm())
    rate = torch.minimum(ratio, torch.tensor(lr)) if clip else lr * ratio
    torch.testing.assert_close(layer.weight.detach(), w0 - rate * (g + 0.01 * w0))
    torch.testing.assert_close(layer.bias.detach(), b0 - lr * gb)
