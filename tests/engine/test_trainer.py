"""The trainer: schedules, resume, checkpoints, run directory."""
import json

import numpy as np
import pytest
import torch

from selfsup.config import load_config
from selfsup.core.errors import CheckpointError, ConfigError
from selfsup.core.schedules import warmup_cosine
from selfsup.engine.checkpoint import list_checkpoints, load_checkpoint
from selfsup.engine.trainer import EpochSampler
from selfsup.runs.train import train

TINY = ["data.name=synthetic", "data.num_samples=64", "data.image_size=16", "data.num_classes=4",
        "backbone.name=test_resnet", "backbone.small_stem=true", "method.proj_hidden_dim=32", "method.proj_dim=16",
        "trainer.batch_size=16", "trainer.epochs=2", "trainer.warmup_epochs=1", "trainer.log_every=1",
        "trainer.optimizer=sgd", "trainer.lr=0.5", "eval.at_end=false", "eval.random_baseline=false"]


def tiny_config(run_dir, *extra):
    return load_config("simclr-digits", [*TINY, f"run.dir={run_dir}", *extra])


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_warmup_cosine_shape_and_ends():
    s = warmup_cosine(1.0, 0.1, total_steps=100, warmup_steps=10)
    assert s.shape == (100,) and s[0] == 0.0 and np.isclose(s[10], 1.0) and s.max() <= 1.0
    assert np.all(np.diff(s[:11]) > 0) and np.all(np.diff(s[10:]) <= 0) and s[-1] > 0.1


def test_sampler_is_a_stateless_permutation_split_across_processes():
    sampler = EpochSampler(num_samples=40, global_batch=8, seed=3)
    epoch = torch.cat([sampler.indices(step, 0, 1) for step in range(5)])
    assert sorted(epoch.tolist()) == list(range(40))
    halves = torch.cat([sampler.indices(7, 0, 2), sampler.indices(7, 1, 2)])
    assert torch.equal(halves, EpochSampler(40, 8, 3).indices(7, 0, 1))
    assert not torch.equal(sampler.indices(0, 0, 1), sampler.indices(5, 0, 1))  # epoch 1 reshuffles


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    full_dir, part_dir = tmp_path / "full", tmp_path / "part"
    train(tiny_config(full_dir, "resume=never"))
    train(tiny_config(part_dir, "trainer.max_steps=3", "trainer.checkpoint_every=100"))
    assert [int(p.stem[5:]) for p in list_checkpoints(part_dir / "checkpoints")] == [3]
    train(tiny_config(part_dir))  # resume=auto continues at step 3
    full, part = read_metrics(full_dir), read_metrics(part_dir)
    assert [r["step"] for r in part] == list(range(1, 9)) == [r["step"] for r in full]
    for a, b in zip(full, part):  # same lr at every step, same losses
        assert a["lr"] == b["lr"] and a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7)
    final_full = load_checkpoint(list_checkpoints(full_dir / "checkpoints")[-1])["model"]
    final_part = load_checkpoint(list_checkpoints(part_dir / "checkpoints")[-1])["model"]
    for key in final_full:
        assert torch.equal(final_full[key], final_part[key]), key


def test_run_directory_contents(tmp_path):
    train(tiny_config(tmp_path, "trainer.max_steps=2"))
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "encoder" / "model.safetensors").is_file()
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    assert {"lr", "weight_decay", "images_per_s", "epoch"} <= set(rows[0])


def test_checkpoint_from_another_method_config_is_refused(tmp_path):
    train(tiny_config(tmp_path, "trainer.max_steps=1"))
    with pytest.raises(CheckpointError, match="small_stem"):
        train(tiny_config(tmp_path, "backbone.small_stem=false"))


def test_batch_larger_than_dataset_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="larger than the dataset"):
        train(tiny_config(tmp_path, "trainer.batch_size=128"))


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


def _one_step_params(run_dir, config_name, *extra):
    cfg = load_config(config_name, [*TINY, "trainer.max_steps=1", "trainer.checkpoint_every=100",
                                    f"run.dir={run_dir}", "method.pred_hidden_dim=32", *extra])
    train(cfg)
    return load_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1])["model"], cfg


def test_byol_predictor_lr_scale_multiplies_only_the_predictors_step(tmp_path):
    """One step from the same init and views: the predictor moves 4x as far, the rest exactly as far."""
    from selfsup.data import open_split
    from selfsup.engine.build import build_method

    plain, cfg = _one_step_params(tmp_path / "x1", "byol-digits", "trainer.warmup_epochs=0")
    fast, _ = _one_step_params(tmp_path / "x4", "byol-digits", "trainer.warmup_epochs=0", "method.predictor_lr_scale=4")
    start = build_method(cfg, open_split(cfg.data, "train", seed=cfg.trainer.seed)).state_dict()
    for key, w0 in start.items():
        if not w0.is_floating_point() or key.startswith("target_") or "running_" in key:
            continue
        if key.startswith("predictor."):
            assert (plain[key] - w0).abs().max() > 0, key
            torch.testing.assert_close(fast[key] - w0, 4 * (plain[key] - w0), rtol=1e-4, atol=1e-6)
        else:
            torch.testing.assert_close(fast[key], plain[key], rtol=0, atol=0)


def test_simsiam_fixed_predictor_lr_steps_during_warmup(tmp_path):
    """Step 1 of a warm-up has lr 0: only a predictor held at the peak lr moves."""
    from selfsup.data import open_split
    from selfsup.engine.build import build_method

    moved, cfg = _one_step_params(tmp_path, "simsiam-digits", "method.predictor_fixed_lr=true")
    assert read_metrics(tmp_path)[0]["lr"] == 0.0
    start = build_method(cfg, open_split(cfg.data, "train", seed=cfg.trainer.seed)).state_dict()
    for key, w0 in start.items():
        if w0.is_floating_point() and "running_" not in key:
            assert torch.equal(moved[key], w0) != key.startswith("predictor."), key


def test_lr_scale_must_be_positive():
    with pytest.raises(ConfigError, match="predictor_lr_scale"):
        load_config("byol-digits", ["method.predictor_lr_scale=0"])


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


def test_lars_trust_coefficient_must_be_positive():
    with pytest.raises(ConfigError, match="lars_trust_coefficient"):
        load_config("simclr-digits", ["trainer.lars_trust_coefficient=0"])


def test_sigterm_writes_a_checkpoint_and_exits_143(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    args = [sys.executable, "-m", "selfsup", "train", "simclr-digits", *TINY, "trainer.epochs=500",
            "trainer.checkpoint_every=100000", f"run.dir={tmp_path}"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM" in err and "rerun the same command to resume" in err
    saved = list_checkpoints(tmp_path / "checkpoints")
    assert len(saved) == 1 and load_checkpoint(saved[0])["step"] == read_metrics(tmp_path)[-1]["step"]
