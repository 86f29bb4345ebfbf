"""Tests for selfsup.runs.export: timm local-dir round trip, load_encoder, atomic writes, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
from torch import nn

from selfsup.core.errors import CheckpointError, ConfigError
from selfsup.models.backbones import create_backbone
from selfsup.runs.export import export_encoder, load_encoder

MEAN = (0.49, 0.48, 0.45)
STD = (0.25, 0.24, 0.26)
SIZE = (3, 32, 32)


def _perturbed(model: nn.Module) -> nn.Module:
    """Give every parameter and BN statistic non-default values, so a lost tensor shows."""
    torch.manual_seed(0)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(0.1 * torch.randn_like(t)).abs_()
    return model.eval()


def _export(model: nn.Module, out: Path, **kw) -> Path:
    return export_encoder(model, out, mean=MEAN, std=STD, input_size=SIZE, **kw)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def small_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    model = _perturbed(create_backbone("resnet10t", small_stem=True))
    return model, _export(model, tmp_path_factory.mktemp("small") / "encoder", method="simclr")


def test_timm_local_dir_round_trip(tmp_path: Path, x: torch.Tensor) -> None:
    model = _perturbed(create_backbone("resnet18"))
    out = _export(model, tmp_path / "encoder", method="simclr", recipe={"trainer": {"epochs": 1}})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "resnet18" and config["num_classes"] == 0
    assert config["num_features"] == 512 and config["model_args"] == {"in_chans": 3}
    assert config["selfsup"] == {
        "small_stem": False, "method": "simclr", "recipe": {"trainer": {"epochs": 1}}, "format_version": 1
    }
    loaded = timm.create_model("local-dir:" + str(out), pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded.num_classes == 0 and loaded.num_features == 512
    data_cfg = timm.data.resolve_data_config({}, model=loaded)
    assert tuple(data_cfg["mean"]) == MEAN and tuple(data_cfg["std"]) == STD
    assert tuple(data_cfg["input_size"]) == SIZE


def test_load_encoder_small_stem_round_trip(small_export: tuple[nn.Module, Path], x: torch.Tensor) -> None:
    model, out = small_export
    loaded = load_encoder(out)
    assert not loaded.training
    first = loaded.conv1[0]
    assert first.kernel_size == (3, 3) and first.stride == (1, 1)
    assert isinstance(loaded.maxpool, nn.Identity)
    with torch.no_grad():
        stem = loaded.maxpool(loaded.act1(loaded.bn1(loaded.conv1(x))))
        assert stem.shape[-2:] == (32, 32)
        assert torch.equal(model(x), loaded(x))
    assert tuple(loaded.pretrained_cfg["mean"]) == MEAN
    assert loaded.default_cfg is loaded.pretrained_cfg
    assert loaded.selfsup_spec["small_stem"] is True


def test_timm_refuses_small_stem_export(small_export: tuple[nn.Module, Path]) -> None:
    # resnet10t's deep-stem weights have timm's shapes; without the guard timm would load them
    # silently into a stride-2 stem and give different features.
    with pytest.raises(TypeError, match="selfsup_small_stem__load_with_selfsup_load_encoder"):
        timm.create_model("local-dir:" + str(small_export[1]), pretrained=True)


def test_reexport_replaces_and_leaves_no_temp(tmp_path: Path, x: torch.Tensor) -> None:
    out = tmp_path / "encoder"
    _export(create_backbone("resnet10t"), out)
    model = _perturbed(create_backbone("resnet10t", in_chans=1))
    export_encoder(model, out, mean=[0.5], std=[0.2], input_size=(1, 32, 32), crop_pct=1.0)
    assert [p.name for p in tmp_path.iterdir()] == ["encoder"]
    loaded = load_encoder(out)
    assert loaded.pretrained_cfg["crop_pct"] == 1.0
    with torch.no_grad():
        assert torch.equal(model(x[:, :1]), loaded(x[:, :1]))


def test_refuses_to_replace_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="holds other files"):
        _export(create_backbone("resnet10t"), tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_shared_tensors_are_exported(tmp_path: Path) -> None:
    model = create_backbone("resnet10t")
    model.alias = model.bn1  # two state-dict keys on one storage
    out = _export(model, tmp_path / "encoder")
    state = safetensors.torch.load_file(str(out / "model.safetensors"))
    assert torch.equal(state["alias.weight"], state["bn1.weight"])


def test_export_argument_errors(tmp_path: Path) -> None:
    model = create_backbone("resnet10t")
    with pytest.raises(ConfigError, match="mean"):
        export_encoder(model, tmp_path / "a", mean=[0.5], std=STD, input_size=SIZE)
    with pytest.raises(ConfigError, match="input_size"):
        export_encoder(model, tmp_path / "b", mean=MEAN, std=STD, input_size=(1, 32, 32))
    with pytest.raises(ConfigError, match="selfsup_spec"):
        export_encoder(timm.create_model("resnet10t", num_classes=0), tmp_path / "c",
                       mean=MEAN, std=STD, input_size=SIZE)


def _rewrite(out: Path, edit) -> None:
    """Load the export's weights, apply ``edit`` to the dict, and save them back."""
    file = str(out / "model.safetensors")
    state = safetensors.torch.load_file(file)
    edit(state)
    safetensors.torch.save_file(state, file)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("bn1.running_var"), r"missing keys \['bn1.running_var'\]"),
        (lambda s: s.update(extra=torch.zeros(1)), r"unexpected keys \['extra'\]"),
        (lambda s: s.update({"bn1.weight": torch.zeros(3)}), "do not fit"),
    ],
)
def test_tampered_weights(tmp_path: Path, edit, message: str) -> None:
    out = _export(create_backbone("resnet10t"), tmp_path / "encoder")
    _rewrite(out, edit)
    with pytest.raises(CheckpointError, match=message):
        load_encoder(out)


def test_corrupt_or_missing_files(tmp_path: Path) -> None:
    out = _export(create_backbone("resnet10t"), tmp_path / "encoder")
    data = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable weights"):
        load_encoder(out)
    (out / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_encoder(out)
    with pytest.raises(CheckpointError, match="not found"):
        load_encoder(tmp_path / "nowhere")
    (out / "config.json").write_text("{not json")
    (out / "model.safetensors").write_bytes(data)
    with pytest.raises(CheckpointError, match="unreadable"):
        load_encoder(out)


# ----------------------------------------------------------------------------- bit-for-bit, preprocessing, formats


def test_safetensors_round_trip_is_bit_for_bit(small_export: tuple[nn.Module, Path], x: torch.Tensor) -> None:
    model, out = small_export
    loaded = load_encoder(out)
    original, reloaded = model.state_dict(), loaded.state_dict()
    assert original.keys() == reloaded.keys()
    for key, tensor in original.items():
        assert reloaded[key].dtype == tensor.dtype and torch.equal(reloaded[key], tensor), key
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_export_records_what_a_user_needs(small_export: tuple[nn.Module, Path]) -> None:
    config = json.loads((small_export[1] / "config.json").read_text())
    assert config["architecture"] == "resnet10t" and config["selfsup"]["small_stem"] is True
    assert config["model_args"]["selfsup_small_stem__load_with_selfsup_load_encoder"] is True
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == list(SIZE) and cfg["mean"] == list(MEAN) and cfg["std"] == list(STD)
    assert config["selfsup"]["method"] == "simclr"


def test_load_encoder_returns_its_preprocessing(small_export: tuple[nn.Module, Path]) -> None:
    from selfsup.evaluation import extract_features

    _, out = small_export
    encoder, preprocess = load_encoder(out, with_preprocess=True)
    assert not encoder.training and encoder.preprocess is preprocess
    assert not any(k.startswith("preprocess") for k in encoder.state_dict())  # timm's state dict, unchanged
    images = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = encoder(preprocess(images))  # resized 40 -> 32 (antialiased), normalised
    expected = extract_features(encoder, images, MEAN, STD, image_size=32, progress=False)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    x = preprocess(images[:, :, :32, :32])
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    manual = (images[:, :, :32, :32].float() / 255 - mean) / std
    torch.testing.assert_close(x, manual)


def _fake_run(tmp_path: Path, model: nn.Module) -> Path:
    """A run directory as training leaves it: config.yaml and encoder/."""
    import yaml

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"method": {"name": "simclr"}, "backbone": {"name": "resnet10t"}}))
    _export(model, run / "encoder", method="simclr")
    return run


@pytest.mark.parametrize("fmt", ["safetensors", "torchscript", "onnx"])
def test_cli_export_formats_reproduce_the_encoder(tmp_path: Path, fmt: str) -> None:
    from selfsup.cli import main

    if fmt == "onnx":
        pytest.importorskip("onnx")
    model = _perturbed(create_backbone("resnet10t", small_stem=True))
    run = _fake_run(tmp_path, model)
    out = tmp_path / "exported"
    assert main(["export", str(run), "--out", str(out), "--format", fmt]) == 0
    x5 = torch.rand(5, *SIZE, generator=torch.Generator().manual_seed(3))  # another batch size than traced
    with torch.no_grad():
        expected = model(x5)
        assert torch.equal(load_encoder(out)(x5), expected)  # the safetensors part, every format
    files = sorted(p.name for p in out.iterdir())
    if fmt == "torchscript":
        assert files == ["config.json", "encoder.pt", "model.safetensors"]
        torch.testing.assert_close(torch.jit.load(str(out / "encoder.pt"))(x5), expected, atol=1e-5, rtol=1e-5)
    elif fmt == "onnx":
        assert files == ["config.json", "encoder.onnx", "model.safetensors"]
        ort = pytest.importorskip("onnxruntime")
        session = ort.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
        (got,) = session.run(["features"], {"pixels": x5.numpy()})
        torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-5, rtol=1e-5)
    else:
        assert files == ["config.json", "model.safetensors"]


def test_onnx_export_that_does_not_reproduce_is_refused(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("onnxruntime")
    import selfsup.runs.export as export_module

    model = _perturbed(create_backbone("resnet10t"))
    out = _export(model, tmp_path / "encoder")
    loaded = load_encoder(out)
    real = export_module._export_onnx
    other = create_backbone("resnet10t").eval()  # other weights, same architecture
    monkeypatch.setattr(export_module, "_export_onnx", lambda encoder, example, file: real(other, example, file))
    target = tmp_path / "onnx"
    with pytest.raises(CheckpointError, match="ONNX export does not reproduce"):
        export_module.export_as(loaded, target, "onnx")
    assert not target.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["encoder"]


def test_export_as_rejects_unknown_format(tmp_path: Path) -> None:
    from selfsup.runs.export import export_as

    loaded = load_encoder(_export(create_backbone("resnet10t"), tmp_path / "encoder"))
    with pytest.raises(ConfigError, match="format"):
        export_as(loaded, tmp_path / "x", "tflite")
