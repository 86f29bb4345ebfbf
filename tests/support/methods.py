"""Tiny methods for tests/methods/: timm's test_resnet with a 3x3 stem, small heads, views of random images."""
from __future__ import annotations

import torch
from torch import nn

from selfsup.config import load_config
from selfsup.data.augment import ViewMaker
from selfsup.engine.checkpoint import list_checkpoints, load_checkpoint
from selfsup.losses.noncontrastive import barlow_twins_loss, vicreg_loss
from selfsup.methods import METHODS, create_method
from selfsup.models.backbones import create_backbone
from selfsup.runs.train import train
from support import TINY


def build(name: str, size: int = 16, **overrides):
    """``name`` on a fresh seeded test_resnet (the same weights every call)."""
    torch.manual_seed(0)
    backbone = create_backbone("test_resnet", small_stem=True)
    return create_method(name, backbone, image_size=size, **overrides)


# ----------------------------------------------------------------------------- BYOL, SimSiam, Barlow Twins, VICReg

SIZE = 16


def build_small(name: str, **overrides):
    """BYOL, SimSiam, Barlow Twins or VICReg on 1-channel ``SIZE``-px images, with the method's ``tiny`` heads."""
    torch.manual_seed(0)
    backbone = create_backbone("test_resnet", small_stem=True, in_chans=1)
    return create_method(name, backbone, image_size=SIZE, **{**METHODS.get(name).tiny, **overrides})


def make_views(method, batch: int = 8, seed: int = 0):
    images = torch.randint(0, 256, (batch, 1, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return ViewMaker(method.views, mean=(0.5,), std=(0.25,))(images, torch.Generator().manual_seed(seed))


class ConstantPredictor(nn.Module):
    """Ignores its input: the only path from the loss to the backbone is then the target's."""

    def __init__(self, dim: int):
        super().__init__()
        self.out = nn.Parameter(torch.randn(dim))

    def forward(self, z):
        return self.out.expand(len(z), -1)


def check_no_gradient_through_the_target_branch(name: str) -> None:
    """With a predictor that ignores its input, the loss reaches the predictor and nothing else."""
    method = build_small(name).train()
    method.predictor = ConstantPredictor(16)
    method(make_views(method), torch.zeros(8), {})["loss"].backward()
    assert method.predictor.out.grad.abs().sum() > 0
    for param_name, p in method.named_parameters():
        if not param_name.startswith("predictor"):
            assert p.grad is None or p.grad.abs().sum() == 0, param_name


def check_method_loss_is_the_loss_of_its_projections(name: str) -> None:
    """Barlow Twins / VICReg: the step's loss is the loss function on the projector's outputs."""
    method = build_small(name).train()
    views = make_views(method)
    loss = method(views, torch.zeros(8), {})["loss"]
    z_a, z_b = method.projector(method.backbone(torch.cat(views))).chunk(2)
    want = barlow_twins_loss(z_a, z_b) if name == "barlowtwins" else vicreg_loss(z_a, z_b)
    assert torch.allclose(loss, want, rtol=1e-5)


# ----------------------------------------------------------------------------- through the trainer

def one_step_params(run_dir, config_name, *extra):
    """One trainer step of ``config_name`` on TINY: (the checkpointed weights, the config)."""
    cfg = load_config(config_name, [*TINY, "trainer.max_steps=1", "trainer.checkpoint_every=100",
                                    f"run.dir={run_dir}", "method.pred_hidden_dim=32", *extra])
    train(cfg)
    return load_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1])["model"], cfg
