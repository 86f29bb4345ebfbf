"""Tests for selfsup.models.backbones: timm contract, small stem, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from selfsup.core.errors import ConfigError
from selfsup.models.backbones import create_backbone, list_backbones, reset_to_torch_defaults


def _stem_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Feature map after a timm ResNet stem (conv1, bn1, act1, maxpool)."""
    return model.maxpool(model.act1(model.bn1(model.conv1(x))))


@pytest.mark.parametrize("name", ["resnet10t", "resnet18"])
def test_output_dim_matches_num_features(name: str) -> None:
    model = create_backbone(name).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, model.num_features)
    assert model.pretrained_cfg["architecture"] == name
    assert model.default_cfg is not None


@pytest.mark.parametrize("name", ["resnet18", "resnet10t"])
def test_small_stem_keeps_resolution(name: str) -> None:
    model = create_backbone(name, small_stem=True).eval()
    first = model.conv1 if isinstance(model.conv1, nn.Conv2d) else model.conv1[0]
    assert first.kernel_size == (3, 3) and first.stride == (1, 1) and first.padding == (1, 1)
    assert first.bias is None
    assert isinstance(model.maxpool, nn.Identity)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert _stem_output(model, x).shape[-2:] == (32, 32)
        assert model(x).shape == (2, model.num_features)
    plain = create_backbone(name).eval()
    with torch.no_grad():
        assert _stem_output(plain, x).shape[-2:] == (8, 8)


def test_small_stem_keeps_out_channels_and_in_chans() -> None:
    model = create_backbone("resnet18", small_stem=True, in_chans=1)
    assert model.conv1.in_channels == 1 and model.conv1.out_channels == 64
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 512)


def test_selfsup_spec_records_arguments() -> None:
    model = create_backbone("resnet10t", small_stem=True, in_chans=1, drop_path_rate=0.1)
    assert model.selfsup_spec == {
        "name": "resnet10t",
        "small_stem": True,
        "in_chans": 1,
        "model_args": {"drop_path_rate": 0.1},
    }


def test_small_stem_unsupported_model() -> None:
    with pytest.raises(ConfigError, match="small_stem is not supported for mobilenetv3_small_050"):
        create_backbone("mobilenetv3_small_050", small_stem=True)


def test_unknown_name_suggests_close_names() -> None:
    with pytest.raises(ConfigError, match="unknown backbone 'resnt18'.*resnet18"):
        create_backbone("resnt18")


def test_bad_model_args() -> None:
    with pytest.raises(ConfigError, match="bad backbone arguments"):
        create_backbone("resnet10t", no_such_argument=1)


def test_list_backbones() -> None:
    names = list_backbones("resnet1*")
    assert "resnet18" in names and "resnet10t" in names
    assert all(n.startswith("resnet1") for n in names)
    assert len(list_backbones()) > 100


def test_reset_to_torch_defaults_undoes_timms_zeroed_last_bn() -> None:
    """timm zero-initialises the last BN of every ResNet block; PyTorch's reset_parameters() sets every BN
    weight to 1 and draws fresh convolutions (seeded by the global RNG)."""
    torch.manual_seed(0)
    model = create_backbone("resnet18", small_stem=True)
    zeroed = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and not m.weight.any()]
    assert len(zeroed) == 8  # one per BasicBlock
    conv = model.conv1.weight.clone()
    torch.manual_seed(0)
    reset = dict(reset_to_torch_defaults(model).named_modules())
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in reset.values() if isinstance(m, nn.BatchNorm2d))
    assert not torch.equal(model.conv1.weight, conv)
    again = create_backbone("resnet18", small_stem=True)
    torch.manual_seed(0)
    assert torch.equal(reset_to_torch_defaults(again).conv1.weight, model.conv1.weight)  # reproducible from the seed
