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


def _queue_steps(method, make_views, values, rows: slice, batch: int, steps: int) -> dict:
    """``steps`` training steps of ``method`` on rows ``rows`` of each step's ``batch`` views; losses and queue."""
    out = {"loss": []}
    for step in range(steps):
        views, vals = make_views(method, batch, step), values(method, step)
        out["loss"].append(method([v[rows] for v in views], torch.zeros(batch), vals)["loss"].detach())
        method.on_step_end(vals)
    out["queue"] = method.queue.clone()
    return out


def _queue_worker(rank: int, world: int, tmp: str, build, make_views, values, batch: int, steps: int) -> None:
    import torch.distributed as dist

    from selfsup.core.distributed import convert_sync_batchnorm

    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)  # what is left of a difference is a real one
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world)
    try:
        method = convert_sync_batchnorm(build())  # BN over the global batch, as the trainer
        half = batch // world
        out = _queue_steps(method, make_views, values, slice(rank * half, (rank + 1) * half), batch, steps)
        torch.save(out, f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def check_queue_two_processes_equal_one(tmp_path, build, make_views, batch: int, steps: int,
                                        values=lambda method, step: {}) -> None:
    """A queued method (SwAV's queue, NNCLR's support set) on 2 processes, each with half of ``batch``, equals
    1 process on the whole batch over ``steps`` steps: the mean of the ranks' losses, and the same queue on
    every process. ``build()`` makes the method (seeded); ``values(method, step)`` its scheduled values."""
    import torch.multiprocessing as mp

    mp.start_processes(_queue_worker, args=(2, str(tmp_path), build, make_views, values, batch, steps), nprocs=2,
                       join=True, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        single = _queue_steps(build(), make_views, values, slice(None), batch, steps)
    finally:
        torch.set_default_dtype(default)
    for step in range(steps):  # each rank's loss is the mean over its half: their mean is the global batch's
        torch.testing.assert_close((ranks[0]["loss"][step] + ranks[1]["loss"][step]) / 2, single["loss"][step],
                                   rtol=1e-9, atol=1e-12)
    assert torch.equal(ranks[0]["queue"], ranks[1]["queue"])  # the same queue on every process
    torch.testing.assert_close(ranks[0]["queue"], single["queue"], rtol=1e-9, atol=1e-12)
