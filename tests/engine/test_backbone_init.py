"""``backbone.init``: a run trains from timm's init (default) or from PyTorch's ``reset_parameters()`` on every
module (``torch_default``, the stronger random baseline of ``eval.random_baseline``), seeded by ``trainer.seed``."""
import pytest
import torch
from torch import nn

from selfsup.core.errors import ConfigError
from selfsup.data import open_split
from selfsup.engine.build import build_method
from selfsup.models.backbones import create_backbone, reset_to_torch_defaults
from support import tiny_config


def backbone_of(cfg):
    return build_method(cfg, open_split(cfg.data, "train", seed=cfg.trainer.seed)).backbone


def bn_weights(backbone):
    return [m.weight for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]


def test_timm_init_zeroes_the_last_bn_of_each_block_and_torch_default_does_not(tmp_path):
    timm_bns = bn_weights(backbone_of(tiny_config(tmp_path)))
    torch_bns = bn_weights(backbone_of(tiny_config(tmp_path, "backbone.init=torch_default")))
    assert sum(not w.any() for w in timm_bns) >= 2  # one per residual block
    assert torch_bns and all(torch.equal(w, torch.ones_like(w)) for w in torch_bns)


def test_torch_default_init_is_reset_parameters_after_timms_init_seeded_by_the_run(tmp_path):
    cfg = tiny_config(tmp_path, "backbone.init=torch_default", "trainer.seed=3")
    channels = open_split(cfg.data, "train", seed=3).shape[0]
    torch.manual_seed(3)
    reference = reset_to_torch_defaults(create_backbone("test_resnet", small_stem=True, in_chans=channels)).state_dict()
    got = backbone_of(cfg).state_dict()
    assert sorted(got) == sorted(reference)
    assert all(torch.equal(got[k], reference[k]) for k in got)
    timm_init = backbone_of(tiny_config(tmp_path, "trainer.seed=3")).state_dict()
    first_conv = next(k for k in got if k.endswith(".weight") and got[k].dim() == 4)
    assert not torch.equal(got[first_conv], timm_init[first_conv])


def test_torch_default_init_with_pretrained_weights_is_a_config_error(tmp_path):
    cfg = tiny_config(tmp_path, "backbone.init=torch_default", "backbone.pretrained=true")
    with pytest.raises(ConfigError, match="backbone.init=torch_default"):
        backbone_of(cfg)


def test_unknown_init_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        tiny_config(tmp_path, "backbone.init=xavier")
