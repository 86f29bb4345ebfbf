"""A small-stem export (issue 16, point 9): ``feature_info`` holds the real reductions, timm's refusal names
``selfsup.load_encoder``, exports made before still load, and ``load_encoder(RUN)`` finds ``RUN/encoder``."""
import json

import pytest
import timm
import torch

from selfsup.core.errors import CheckpointError
from selfsup.models.backbones import create_backbone
from selfsup.runs.export import export_encoder, load_encoder

SIZE = 32


def _export(arch: str, out, small_stem: bool = True):
    torch.manual_seed(0)
    encoder = create_backbone(arch, small_stem=small_stem).eval()
    export_encoder(encoder, out, mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(3, SIZE, SIZE), method="simclr")
    return encoder


def _measured_reductions(model) -> list[int]:
    """Input side / feature-map side at each module ``feature_info`` names, from a forward pass."""
    model.eval()
    modules, sides = dict(model.named_modules()), {}

    def record(name):
        def hook(module, inputs, output):
            sides.setdefault(name, output.shape[-1])
        return hook

    hooks = [modules[f["module"]].register_forward_hook(record(f["module"])) for f in model.feature_info]
    with torch.no_grad():
        model(torch.rand(1, 3, SIZE, SIZE))
    for h in hooks:
        h.remove()
    return [SIZE // sides[f["module"]] for f in model.feature_info]


@pytest.mark.parametrize("arch, expected", [("resnet18", [1, 1, 2, 4, 8]), ("resnet10t", [1, 1, 2, 4, 8]),
                                            ("test_resnet", [1, 1, 2, 4, 8])])
def test_feature_info_of_a_small_stem_export_holds_the_real_reductions(tmp_path, arch, expected):
    encoder = _export(arch, tmp_path / "enc")
    loaded = load_encoder(tmp_path / "enc")
    for model in (encoder, loaded):
        assert [f["reduction"] for f in model.feature_info] == expected == _measured_reductions(model)


def test_feature_info_of_timms_own_stem_is_unchanged():
    model = create_backbone("resnet18")
    assert [f["reduction"] for f in model.feature_info] == [2, 4, 8, 16, 32] == _measured_reductions(model)


def test_timm_refuses_a_small_stem_export_naming_selfsup_load_encoder(tmp_path):
    _export("test_resnet", tmp_path / "enc")
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'selfsup_small_stem__load_with_selfsup_load_encoder'"):
        timm.create_model("local-dir:" + str(tmp_path / "enc"), pretrained=True)


def test_timm_loads_an_export_with_timms_own_stem(tmp_path):
    encoder = _export("test_resnet", tmp_path / "enc", small_stem=False)
    loaded = timm.create_model("local-dir:" + str(tmp_path / "enc"), pretrained=True).eval()
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), encoder(x))


def test_an_export_made_with_the_old_small_stem_key_still_loads(tmp_path):
    encoder = _export("test_resnet", tmp_path / "enc")
    config_file = tmp_path / "enc" / "config.json"
    config = json.loads(config_file.read_text())
    config["model_args"]["selfsup_small_stem"] = config["model_args"].pop("selfsup_small_stem__load_with_selfsup_load_encoder")
    config_file.write_text(json.dumps(config))
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(load_encoder(tmp_path / "enc")(x), encoder(x))


def test_load_encoder_of_a_run_directory_loads_its_encoder(tmp_path):
    run = tmp_path / "run"
    encoder = _export("test_resnet", run / "encoder")
    (run / "config.yaml").write_text("method:\n  name: simclr\n")
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(load_encoder(run)(x), encoder(x))


def test_load_encoder_of_an_unfinished_run_names_its_encoder_directory(tmp_path):
    (tmp_path / "config.yaml").write_text("method:\n  name: simclr\n")
    with pytest.raises(CheckpointError) as err:
        load_encoder(tmp_path)
    message = str(err.value)
    assert f"{tmp_path} is a run directory and its encoder is {tmp_path / 'encoder'}" in message
    assert f"selfsup export {tmp_path} --out DIR" in message and "\n" not in message
