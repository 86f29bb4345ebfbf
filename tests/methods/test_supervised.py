"""Downstream baselines: supervised method, multiclass hinge, sequence backbones, sequence data.

Every baseline trains end to end (``selfsup.runs.train.train``) on a separable synthetic set for a few
CPU steps: finite, decreasing loss and a high ``classifier`` top-1 in eval.json.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from selfsup.config import resolve_config
from selfsup.core.errors import ConfigError, DataError
from selfsup.data import load_dataset
from selfsup.data.augment import ViewMaker
from selfsup.losses import multiclass_hinge
from selfsup.models.backbones import create_backbone
from selfsup.runs.export import export_encoder, load_encoder
from selfsup.runs.train import train


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared, oversubscribed CPU
    OpenMP's spinning barriers made these tests ~20x slower (GRU steps: 1.4 s instead of 0.07 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- multiclass hinge

def slow_crammer_singer(scores: torch.Tensor, target: torch.Tensor, margin: float) -> float:
    """Crammer & Singer 2001, eq. (13), one sample and one wrong class at a time."""
    total = 0.0
    for s, y in zip(scores.tolist(), target.tolist()):
        worst = max(s[j] for j in range(len(s)) if j != y)
        total += max(0.0, margin + worst - s[y])
    return total / len(scores)


@pytest.mark.parametrize("margin", [0.0, 0.5, 1.0, 3.0])
def test_multiclass_hinge_matches_slow_loop(margin):
    g = torch.Generator().manual_seed(int(margin * 10))
    scores = torch.randn(17, 6, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, 6, (17,), generator=g)
    scores[0] = 0.0  # ties: every wrong class is the worst one
    loss = multiclass_hinge(scores, target, margin)
    assert loss.item() == pytest.approx(slow_crammer_singer(scores, target, margin), abs=1e-12)


def test_multiclass_hinge_gradient_reaches_true_and_worst_class_only():
    scores = torch.tensor([[2.0, 1.5, -1.0], [5.0, 0.0, 0.0]], requires_grad=True)
    multiclass_hinge(scores, torch.tensor([0, 0]), margin=1.0).backward()
    # sample 0 violates the margin through class 1; sample 1 is satisfied (no gradient)
    torch.testing.assert_close(scores.grad, torch.tensor([[-0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="K >= 2"):
        multiclass_hinge(torch.zeros(3, 1), torch.zeros(3, dtype=torch.int64))


# ----------------------------------------------------------------------------- sequence backbones

SEQ_CASES = [
    ("lstm", {}),
    ("lstm", {"bidirectional": True, "num_layers": 2}),
    ("gru", {"bidirectional": True}),
    ("gru", {"tokens": "patches", "patch_size": 4}),
    ("seq_transformer", {"embed_dim": 32, "depth": 2, "num_heads": 2}),
    ("seq_transformer", {"embed_dim": 32, "depth": 1, "num_heads": 2, "positions": "learned",
                         "tokens": "patches", "patch_size": 4}),
]


def seq_model(name: str, args: dict, in_chans: int = 2, img_size=(12, 8)) -> torch.nn.Module:
    torch.manual_seed(0)
    args = {"hidden_size": 16} | args if name != "seq_transformer" else args
    return create_backbone(name, in_chans=in_chans, img_size=img_size, **args).eval()


@pytest.mark.parametrize("name,args", SEQ_CASES)
def test_sequence_backbone_shapes(name, args):
    model = seq_model(name, args)
    out = model(torch.randn(5, 2, 12, 8))
    assert out.shape == (5, model.num_features)
    expected = {"lstm": 16, "gru": 16, "seq_transformer": 32}[name] * (2 if args.get("bidirectional") else 1)
    assert model.num_features == expected
    with pytest.raises(ValueError, match="built for"):
        model(torch.randn(5, 3, 12, 8))  # wrong channel count


@pytest.mark.parametrize("name,args", [c for c in SEQ_CASES if c[1].get("tokens") != "patches"])
def test_padding_never_changes_the_output(name, args):
    """A batch of sequences padded to T (NaN rows, or garbage + explicit lengths) gives each
    sequence the output it has alone at its own length."""
    model = seq_model(name, args, in_chans=1, img_size=(10, 3))  # sequences: [B, 1, T=10, D=3] rows
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 10, 3, generator=g)
    lengths = torch.tensor([10, 3, 7, 1])
    padded = x.clone()
    for i, n in enumerate(lengths.tolist()):
        padded[i, :, n:] = float("nan")
    garbage = x.clone()  # the values past each length are random, made irrelevant by ``lengths``
    with torch.no_grad():
        alone = torch.cat([model(x[i : i + 1, :, :n]) for i, n in enumerate(lengths.tolist())])
        torch.testing.assert_close(model(padded), alone, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(garbage, lengths), alone, atol=1e-5, rtol=1e-5)


def test_packed_equals_unpacked_for_equal_lengths():
    model = seq_model("lstm", {"bidirectional": True, "num_layers": 2})
    x = torch.randn(3, 2, 12, 8)
    with torch.no_grad():
        packed = model(x)  # bidirectional: always packed
        _, (h_n, _) = model.rnn(x.permute(0, 2, 1, 3).reshape(3, 12, 16))  # plain run of the same nn.LSTM
    torch.testing.assert_close(packed, torch.cat([h_n[-2], h_n[-1]], dim=1), atol=1e-6, rtol=1e-6)


def test_sequence_backbone_errors_are_config_errors():
    with pytest.raises(ConfigError, match="img_size"):
        create_backbone("lstm")
    with pytest.raises(ConfigError, match="small_stem"):
        create_backbone("gru", img_size=8, small_stem=True)
    with pytest.raises(ConfigError, match="bad backbone arguments"):
        create_backbone("seq_transformer", img_size=8, tokens="patches", patch_size=3)
    with pytest.raises(ConfigError, match="lstm"):
        create_backbone("lstn")


@pytest.mark.parametrize("name,args", [SEQ_CASES[1], SEQ_CASES[5]])
def test_sequence_backbone_export_round_trip(name, args, tmp_path):
    model = seq_model(name, args)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = export_encoder(model, tmp_path / "enc", mean=(0.1, 0.2), std=(0.9, 1.1), input_size=(2, 12, 8), method="supervised")
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == name and config["num_features"] == model.num_features
    loaded = load_encoder(out)
    assert loaded.selfsup_spec == model.selfsup_spec | {"model_args": json.loads(json.dumps(model.selfsup_spec["model_args"]))}
    x = torch.randn(4, 2, 12, 8)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


# ----------------------------------------------------------------------------- sequence data

def write_sequences(path, n: int, seed: int, variable: bool = True) -> None:
    """Two classes told apart by the sign of feature 0's mean over the valid steps; T=9, D=3."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(size=(n, 9, 3)).astype(np.float32)
    x[:, :, 0] += np.where(y == 1, 1.5, -1.5)[:, None]
    lengths = rng.integers(3, 10, size=n) if variable else np.full(n, 9)
    for i, length in enumerate(lengths):
        x[i, length:] = 1e6  # whatever a file holds past the length must not matter
    np.savez(path, x=x, y=y, lengths=lengths, classes=np.array(["neg", "pos"]))


def test_sequence_dataset_layout_stats_and_errors(tmp_path):
    write_sequences(tmp_path / "tr.npz", 40, 0)
    ds = load_dataset("sequence", "train", train_path=str(tmp_path / "tr.npz"))
    raw = np.load(tmp_path / "tr.npz")
    assert ds.images.shape == (40, 3, 9, 1) and ds.images.dtype == torch.float32 and ds.classes == ["neg", "pos"]
    first = int(raw["lengths"][0])
    torch.testing.assert_close(ds.images[0, :, :first, 0], torch.from_numpy(raw["x"][0, :first]).T)
    assert torch.isnan(ds.images[0, :, first:]).all()
    valid = np.concatenate([raw["x"][i, : raw["lengths"][i]] for i in range(40)])
    np.testing.assert_allclose(ds.mean, valid.mean(0), rtol=1e-5)
    np.testing.assert_allclose(ds.std, valid.std(0), rtol=1e-5)
    torch.save({"x": torch.randn(5, 4, 2), "y": torch.tensor([0, 1, 2, 0, 1])}, tmp_path / "s.pt")
    assert load_dataset("sequence", "val", val_path=str(tmp_path / "s.pt")).images.shape == (5, 2, 4, 1)
    with pytest.raises(DataError, match="data.val is not set"):
        load_dataset("sequence", "val", train_path=str(tmp_path / "tr.npz"))
    np.savez(tmp_path / "bad.npz", x=np.full((2, 3, 1), np.nan), y=np.array([0, 1]))
    with pytest.raises(DataError, match="NaN"):
        load_dataset("sequence", "train", train_path=str(tmp_path / "bad.npz"))


def test_float_data_pass_through_the_view_maker_unaugmented():
    from selfsup.data.augment import AugmentSpec

    x = torch.randn(4, 3, 9, 1)
    x[0, :, 5:] = float("nan")
    views = ViewMaker([(AugmentSpec(size=1), 1)], mean=(1.0, 0.0, 2.0), std=(2.0, 1.0, 4.0))(x, torch.Generator())
    mean, std = torch.tensor([1.0, 0.0, 2.0]).view(1, 3, 1, 1), torch.tensor([2.0, 1.0, 4.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(views[0], (x - mean) / std, equal_nan=True)


# ----------------------------------------------------------------------------- which backbone runs which method

def one_step_loss(method_name: str, backbone: torch.nn.Module, size: int = 32) -> torch.Tensor:
    from selfsup.methods import create_method

    method = create_method(method_name, backbone, image_size=size, num_classes=4).train()
    images = torch.randint(0, 256, (8, 3, size, size), dtype=torch.uint8)
    views = ViewMaker(method.views, mean=(0.5,) * 3, std=(0.25,) * 3)(images, torch.Generator().manual_seed(0))
    values = {"lr": 0.1, "weight_decay": 0.0,
              **{k: float(v[0]) for k, v in method.schedules(total_steps=10, steps_per_epoch=5).items()}}
    return method(views, torch.randint(0, 4, (8,)), values)["loss"]


def test_selfsup_list_compatibility_claims_hold_for_every_method():
    """`selfsup list`: sequence backbones run every method except MULTI_SIZE_METHODS, which fail
    with a clear error; a ViT with dynamic_img_size runs every method."""
    from selfsup.cli import MULTI_SIZE_METHODS
    from selfsup.methods import METHODS

    vit_args = dict(img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2, dynamic_img_size=True,
                    dynamic_img_pad=True)
    for name in METHODS.names():
        torch.manual_seed(0)
        lstm = create_backbone("lstm", img_size=32, hidden_size=8)
        if name in MULTI_SIZE_METHODS:
            with pytest.raises(ValueError, match="built for"):
                one_step_loss(name, lstm)
        else:
            assert torch.isfinite(one_step_loss(name, lstm)), name
        assert torch.isfinite(one_step_loss(name, create_backbone("vit_tiny_patch16_224", **vit_args))), name


# ----------------------------------------------------------------------------- end to end

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


def test_model_args_config_key_and_list_output(capsys):
    raw = {"backbone": {"name": "lstm", "model_args": {"hidden_size": 32, "bidirectional": True}}}
    cfg = resolve_config(raw, ["backbone.model_args.num_layers=2"])
    assert cfg.backbone.model_args == {"hidden_size": 32, "bidirectional": True, "num_layers": 2}
    with pytest.raises(ConfigError, match="mapping"):
        resolve_config({"backbone": {"model_args": [1, 2]}})
    from selfsup.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "supervised" in out and "lstm, gru, seq_transformer   every method except dino, jigsaw" in out
    assert "sequence" in out.split("datasets:")[1].split("backbones:")[0]


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
