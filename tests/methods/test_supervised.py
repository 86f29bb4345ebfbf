"""The supervised method, the downstream baseline: every backbone family trains end to end
(``selfsup.runs.train.train``) on a separable synthetic set for a few CPU steps: finite, decreasing
loss and a high ``classifier`` top-1 in eval.json; `selfsup eval` and `selfsup export` on such a run.
Its loss options: tests/losses/test_classification.py; the sequence backbones:
tests/models/test_sequence_backbones.py; sequence data: tests/data/test_sequences.py.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from selfsup.config import resolve_config
from selfsup.core.errors import ConfigError
from selfsup.runs.export import load_encoder
from selfsup.runs.train import train
from support import write_sequences

pytestmark = pytest.mark.usefixtures("one_thread")


BASELINES = {
    "cnn": ("test_resnet", {}, {"backbone.small_stem": True}),
    "lstm": ("lstm", {"hidden_size": 32, "bidirectional": True}, {"trainer.grad_clip": 1.0}),
    "gru": ("gru", {"hidden_size": 32, "num_layers": 2}, {"method.loss": "hinge"}),
    "seq_transformer": ("seq_transformer", {"embed_dim": 32, "depth": 1, "num_heads": 2, "tokens": "patches",
                                            "patch_size": 4}, {"method.label_smoothing": 0.1}),
    "vit": ("vit_tiny_patch16_224", {"img_size": 16, "patch_size": 4, "depth": 1, "embed_dim": 32, "num_heads": 2},
            {"method.dropout": 0.1}),
}


def run_baseline(tmp_path, backbone: str, model_args: dict, extra: dict, data: dict) -> tuple[list[float], dict]:
    """Train ``backbone`` with the supervised method through ``selfsup.runs.train``; (logged losses, eval.json)."""
    raw = {"method": {"name": "supervised", "crop_scale": [0.8, 1.0]},
           "backbone": {"name": backbone, "model_args": model_args}, "data": data,
           "trainer": {"epochs": 8, "batch_size": 32, "optimizer": "adamw", "lr": 3e-3, "lr_scaling": "none",
                       "warmup_epochs": 0, "weight_decay": 1e-4, "log_every": 2, "checkpoint_every": 1000},
           "eval": {"knn_k": [5], "linear": False}, "run": {"dir": str(tmp_path / "run")}, "resume": "never"}
    results = train(resolve_config(raw, [f"{k}={v}" for k, v in extra.items()]))
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert results == json.loads((tmp_path / "run" / "eval.json").read_text())
    return losses, results


@pytest.mark.parametrize("family", BASELINES)
def test_baseline_learns_a_separable_image_set(family, tmp_path):
    name, model_args, extra = BASELINES[family]
    data = {"name": "synthetic", "image_size": 16, "num_samples": 128}
    losses, results = run_baseline(tmp_path, name, model_args, extra, data)
    assert all(np.isfinite(losses)) and np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3]), losses
    assert results["classifier"]["top1"] >= 0.9, results
    assert set(results) == {"knn_k5", "classifier"}


def test_lstm_learns_variable_length_sequences_and_refuses_ssl(tmp_path):
    write_sequences(tmp_path / "tr.npz", 128, 0)
    write_sequences(tmp_path / "va.npz", 64, 1)
    data = {"name": "sequence", "train": str(tmp_path / "tr.npz"), "val": str(tmp_path / "va.npz")}
    losses, results = run_baseline(tmp_path, "lstm", {"hidden_size": 16}, {}, data)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert results["classifier"]["top1"] >= 0.9, results
    encoder = load_encoder(tmp_path / "run" / "encoder")  # img_size filled in from the data: [T, 1]
    assert encoder.selfsup_spec["model_args"]["img_size"] == [9, 1] and encoder.in_chans == 3
    with pytest.raises(ConfigError, match="supervised"):
        run_baseline(tmp_path, "lstm", {}, {"method.name": "simclr"}, data)
    with pytest.raises(ConfigError, match="sequence backbone"):
        run_baseline(tmp_path, "test_resnet", {}, {}, data)


@pytest.mark.parametrize("family", ["lstm", "gru", "seq_transformer", "vit"])
@pytest.mark.parametrize("fmt", ["safetensors", "torchscript"])
def test_baseline_run_through_selfsup_eval_and_export(family, fmt, tmp_path, capsys):
    """A trained baseline run: `selfsup eval` re-measures the run's kNN accuracy, and `selfsup export`
    writes an encoder that reproduces the run's features (and `selfsup eval` accepts that export)."""
    from selfsup.cli import main

    name, model_args, extra = BASELINES[family]
    data = {"name": "synthetic", "image_size": 16, "num_samples": 128}
    _, results = run_baseline(tmp_path, name, model_args, extra, data)
    run = tmp_path / "run"
    assert main(["eval", str(run), "--protocol", "knn"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["knn_k5"]["top1"] == pytest.approx(results["knn_k5"]["top1"])
    assert json.loads((run / "eval.json").read_text())["classifier"] == results["classifier"]  # merged, not replaced

    out = tmp_path / "export"
    assert main(["export", str(run), "--out", str(out), "--format", fmt]) == 0
    original, exported = load_encoder(run / "encoder"), load_encoder(out)
    assert json.loads((out / "config.json").read_text())["architecture"] == name
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        reference = original(x)
        torch.testing.assert_close(exported(x), reference)
        if fmt == "torchscript":
            torch.testing.assert_close(torch.jit.load(str(out / "encoder.pt"))(x), reference, atol=1e-5, rtol=1e-5)
    capsys.readouterr()
    assert main(["eval", str(out), "--protocol", "knn"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["knn_k5"]["top1"] == pytest.approx(
        results["knn_k5"]["top1"])


@pytest.mark.parametrize("form", [None, "weston_watkins", "crammer_singer"])
def test_hinge_loss_takes_the_configured_form_weston_watkins_by_default(form):
    from selfsup.losses import multiclass_hinge
    from selfsup.methods import create_method
    from selfsup.models.backbones import create_backbone

    torch.manual_seed(0)
    options = {"loss": "hinge", **({"hinge_form": form} if form else {})}
    method = create_method("supervised", create_backbone("test_resnet", small_stem=True), image_size=16,
                           num_classes=5, **options).eval()
    x, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 4, 0])
    with torch.no_grad():
        want = multiclass_hinge(method.classify(x), y, 1.0, form=form or "weston_watkins")
        assert method([x], y, {})["loss"] == want
