"""Optimisers and parameter groups (selfsup.engine.optim): no weight decay on biases and norms, lr rules,
LARS's trust ratio; any optimizer of timm's factory over our groups, two steps of SGD, Nesterov, Adam, AdaGrad
and RMSProp against their update rules written out here."""
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


# ----------------------------------------------------------------------------- timm's factory over our groups

LR, WD, MU, EPS = 0.1, 0.05, 0.8, 1e-3  # MU: momentum and beta1 (not 0.9, the usual default)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))  # weight: decayed; bias, norm: not


def _cfg(*overrides):
    return load_config("simclr-digits", [f"trainer.weight_decay={WD}", f"trainer.momentum={MU}", *overrides]).trainer


def _rule(name: str, w: torch.Tensor, grads: list[torch.Tensor], wd: float) -> torch.Tensor:
    """``w`` after one optimizer step per gradient in ``grads``, by the textbook rule (L2 weight decay ``wd``
    added to the gradient, as PyTorch's SGD / Adam / Adagrad / RMSprop do)."""
    w, buf, m, v, acc = w.clone(), None, torch.zeros_like(w), torch.zeros_like(w), torch.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        d = g + wd * w
        if name in ("sgd", "nesterov"):  # heavy-ball momentum buffer b = mu b + d (b_1 = d)
            buf = d.clone() if buf is None else MU * buf + d
            w = w - LR * (d + MU * buf if name == "nesterov" else buf)  # Nesterov: the look-ahead d + mu b
        elif name == "adam":  # bias-corrected first and second moments (Kingma & Ba 2015, algorithm 1)
            m, v = MU * m + (1 - MU) * d, 0.999 * v + (1 - 0.999) * d * d
            m_hat, v_hat = m / (1 - MU ** t), v / (1 - 0.999 ** t)
            w = w - LR * m_hat / (v_hat.sqrt() + EPS)
        elif name == "adagrad":  # accumulated squares (Duchi et al. 2011)
            acc = acc + d * d
            w = w - LR * d / (acc.sqrt() + EPS)
        elif name == "rmsprop":  # running average of squares, alpha 0.8, then momentum on the scaled step (Tieleman & Hinton 2012)
            v = 0.8 * v + 0.2 * d * d
            step = d / (v.sqrt() + EPS)
            buf = step if buf is None else MU * buf + step
            w = w - LR * buf
    return w


EXTRA = {"sgd": [], "nesterov": [], "adam": [f"trainer.optimizer_args.eps={EPS}"],
         "adagrad": [f"trainer.optimizer_args.eps={EPS}"],
         "rmsprop": [f"trainer.optimizer_args.eps={EPS}", "trainer.optimizer_args.alpha=0.8"]}


@pytest.mark.parametrize("name", list(EXTRA))
def test_two_steps_follow_the_update_rule_written_out(name):
    from selfsup.engine.optim import create_optimizer

    model = _model()
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(1)
    grads = [[torch.randn(p.shape, generator=gen) for p in params] for _ in range(2)]
    opt = create_optimizer(model, _cfg(f"trainer.optimizer={name}", *EXTRA[name]), LR)
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g.clone()
        opt.step()
    for i, (p, w0) in enumerate(zip(params, before)):
        expected = _rule(name, w0, [step[i] for step in grads], WD if p.ndim > 1 else 0.0)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6, msg=f"{name}: parameter {i}")


@pytest.mark.parametrize("name", ["adamw", "lamb", "lion", "lars", "nesterov"])
def test_timm_optimizers_keep_our_groups_no_decay_on_biases_and_norms(name):
    """Zero gradients: only weight decay moves a parameter; biases and the norm's parameters stay bit for bit."""
    from selfsup.engine.optim import create_optimizer

    model = _model()
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    opt = create_optimizer(model, _cfg(f"trainer.optimizer={name}", "trainer.weight_decay=0.5"), LR)
    assert [(g["weight_decay"], g["wd_scale"], g["lr_scale"]) for g in opt.param_groups] == [(0.5, 1.0, 1.0), (0.0, 0.0, 1.0)]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    for p, w0 in zip(params, before):
        assert torch.equal(p.detach(), w0) != (p.ndim > 1), (name, p.shape)


def test_sgd_is_heavy_ball_momentum_and_nesterov_is_its_own_name():
    from selfsup.engine.optim import create_optimizer

    sgd, nesterov = (create_optimizer(_model(), _cfg(f"trainer.optimizer={n}"), LR) for n in ("sgd", "nesterov"))
    assert type(sgd) is torch.optim.SGD and not sgd.defaults["nesterov"] and sgd.defaults["momentum"] == MU
    assert nesterov.defaults["nesterov"]


def test_betas_are_momentum_and_beta2_or_the_optimizers_own():
    from selfsup.engine.optim import create_optimizer

    assert create_optimizer(_model(), _cfg("trainer.optimizer=adamw"), LR).defaults["betas"] == (MU, 0.999)
    assert create_optimizer(_model(), _cfg("trainer.optimizer=lion"), LR).defaults["betas"] == (MU, 0.99)
    opt = create_optimizer(_model(), _cfg("trainer.optimizer=adam", "trainer.beta2=0.95"), LR)
    assert opt.defaults["betas"] == (MU, 0.95)


@pytest.mark.parametrize("override, message", [
    ("trainer.optimizer=adamx", r"^trainer.optimizer=adamx is no optimizer of timm's factory; did you mean 'adam"),
    ("trainer.optimizer=rmsprp", r"did you mean 'rmsprop'\?$"),
    ("trainer.schedule=multistep", r"^config key 'trainer.lr_milestones' must be a non-empty list of epochs"),
    ("trainer.lr_gamma=1.5", r"^config key 'trainer.lr_gamma' must be in \(0, 1\]"),
    ("trainer.beta2=1.0", r"^config key 'trainer.beta2' must be in \[0, 1\)"),
])
def test_bad_optimizer_and_schedule_settings_are_one_line(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config("simclr-digits", [override])
    assert "\n" not in str(err.value)


def test_a_bad_optimizer_argument_or_a_second_order_optimizer_is_one_line():
    from selfsup.engine.optim import create_optimizer

    with pytest.raises(ConfigError, match=r"^trainer.optimizer=adamw with .*'nonsense': 1.*unexpected keyword") as err:
        create_optimizer(_model(), _cfg("trainer.optimizer=adamw", "trainer.optimizer_args.nonsense=1"), LR)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="second-order optimizer"):
        create_optimizer(_model(), _cfg("trainer.optimizer=adahessian"), LR)
