"""Feature maps of exported encoders: strides and channels as the encoder's config says; an FPN takes them."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import FeaturePyramidNetwork

from selfsup import create_backbone
from selfsup.core.errors import ConfigError
from selfsup.runs.export import export_encoder
from selfsup.transfer import WithFPN, feature_maps, load_feature_maps

pytestmark = pytest.mark.usefixtures("one_thread")

VIT_ARGS = dict(img_size=32, patch_size=4, depth=4)  # a tiny ViT-Tiny, as mae-digits.yaml cuts it


def _export(tmp_path, encoder, size):
    return export_encoder(encoder, tmp_path / "enc", mean=[0.5] * 3, std=[0.25] * 3, input_size=(3, size, size))


@pytest.mark.parametrize("small_stem, strides", [(False, [4, 8, 16, 32]), (True, [1, 2, 4, 8])])
def test_resnet18_maps_match_its_stages(tmp_path, small_stem, strides):
    torch.manual_seed(0)
    path = _export(tmp_path, create_backbone("resnet18", small_stem=small_stem), 32)
    maps = load_feature_maps(path)
    assert maps.strides == strides and maps.channels == [64, 128, 256, 512]
    out = maps(torch.rand(2, 3, 64, 64))
    assert list(out) == ["0", "1", "2", "3"]
    for (name, t), s, c in zip(out.items(), strides, maps.channels):
        assert t.shape == (2, c, 64 // s, 64 // s), name


def test_resnet_maps_are_the_exports_weights(tmp_path):
    torch.manual_seed(0)
    encoder = create_backbone("resnet18").eval()
    maps = load_feature_maps(_export(tmp_path, encoder, 32))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(maps(x)["3"].mean((2, 3)), encoder(x), atol=1e-5)


def test_vit_maps_are_patch_grids(tmp_path):
    torch.manual_seed(0)
    path = _export(tmp_path, create_backbone("vit_tiny_patch16_224", **VIT_ARGS), 32)
    maps = load_feature_maps(path, indices=[1, -1])
    assert maps.strides == [4, 4] and maps.channels == [192, 192] and maps.indices == [1, 3]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = maps(x)
        assert [t.shape for t in out.values()] == [(2, 192, 8, 8)] * 2
        tokens = maps.encoder.forward_patches(x)  # the last block's patch tokens after the final norm
    assert torch.allclose(out["1"].flatten(2).transpose(1, 2), tokens, atol=1e-5)


def test_fpn_takes_the_maps_without_names():
    torch.manual_seed(0)
    maps = feature_maps(create_backbone("resnet18"))
    net = WithFPN(maps, out_channels=32)
    out = net(torch.rand(1, 3, 64, 64))
    assert list(out) == ["0", "1", "2", "3", "pool"] and net.strides == [4, 8, 16, 32, 64]
    assert all(t.shape[1] == 32 and t.shape[-1] == 64 // s for t, s in zip(out.values(), net.strides))
    fpn = FeaturePyramidNetwork(maps.channels, 16)  # torchvision's FPN straight on the dict
    assert [t.shape[1] for t in fpn(maps(torch.rand(1, 3, 64, 64))).values()] == [16] * 4


def test_bad_index_and_sequence_backbone_are_one_line_errors():
    with pytest.raises(ConfigError, match="out of range"):
        feature_maps(create_backbone("resnet18"), indices=[7])
    with pytest.raises(ConfigError, match="forward_intermediates"):
        feature_maps(create_backbone("gru", img_size=[8, 8]))


def test_rgb_images_reach_a_grey_encoder_as_their_channel_mean_and_grey_reach_rgb_repeated():
    torch.manual_seed(0)
    grey = feature_maps(create_backbone("resnet18", small_stem=True, in_chans=1).eval())
    rgb = torch.rand(2, 3, 32, 32)
    for got, want in zip(grey(rgb).values(), grey(rgb.mean(1, keepdim=True)).values()):
        torch.testing.assert_close(got, want)
    colour = feature_maps(create_backbone("resnet18", small_stem=True).eval())
    one = torch.rand(2, 1, 32, 32)
    for got, want in zip(colour(one).values(), colour(one.expand(-1, 3, -1, -1)).values()):
        torch.testing.assert_close(got, want)
