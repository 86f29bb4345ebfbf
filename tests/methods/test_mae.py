"""MAE (He et al. 2022, arXiv:2111.06377): the encoder sees the visible patches only, the step's loss is
mae_loss of the decoder's predictions, the masks are a function of (seed, step, micro-batch, process) --
also across a stopped and resumed run -- and bad set-ups fail in one line. The loss: tests/losses/test_mae.py."""
import pytest
import torch

import selfsup.methods.mae as mae_module
from selfsup.config import load_config
from selfsup.core.errors import ConfigError
from selfsup.losses.mae import mae_loss, patchify
from selfsup.methods import METHODS, create_method
from selfsup.models.backbones import create_backbone
from support import assert_same_tensors, final_state, read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")
VIT = dict(img_size=8, patch_size=2, depth=1, embed_dim=32, num_heads=2, in_chans=1)


def build(**overrides):
    torch.manual_seed(0)
    backbone = create_backbone("vit_tiny_patch16_224", **VIT)
    return create_method("mae", backbone, image_size=8, **{**METHODS.get("mae").tiny, **overrides}).train()


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def pixel_mask(mask: torch.Tensor) -> torch.Tensor:
    """[B, 16] patch mask of 2x2 patches on a 4x4 grid -> [B, 1, 8, 8] pixel mask."""
    b = mask.shape[0]
    return mask.view(b, 1, 4, 1, 4, 1).expand(b, 1, 4, 2, 4, 2).reshape(b, 1, 8, 8)


def test_step_is_mae_loss_of_the_decoder_on_the_masked_patches():
    mae, x = build(mask_ratio=0.75), images()
    out = mae([x], torch.zeros(4), {"mask_step": 7.0})
    mask = mae.masks(4, 7, 0, x.device)
    assert mask.shape == (4, 16) and (mask.sum(1) == 12).all()
    keep = (~mask).nonzero()[:, 1].view(4, 4)
    pred = mae.decoder(mae.backbone.forward_visible(x, keep), keep)
    assert pred.shape == (4, 16, 4)  # 2x2 pixels x 1 channel per patch
    torch.testing.assert_close(out["loss"], mae_loss(pred, patchify(x, 2), mask, norm_pix=True))
    assert out["features"].shape == (4, 32) and not out["features"].requires_grad


def test_the_encoder_never_sees_the_masked_pixels():
    """Changing the masked patches' pixels changes no prediction (only the loss's targets), and no gradient of
    the predictions reaches those pixels."""
    mae, x = build(), images()
    mask = mae.masks(4, 3, 0, x.device)
    keep = (~mask).nonzero()[:, 1].view(4, -1)
    x = x.requires_grad_()
    pred = mae.decoder(mae.backbone.forward_visible(x, keep), keep)
    other = torch.where(pixel_mask(mask), torch.randn_like(x) * 50, x.detach())
    torch.testing.assert_close(pred, mae.decoder(mae.backbone.forward_visible(other, keep), keep))
    pred.square().sum().backward()
    assert (x.grad[pixel_mask(mask)] == 0).all() and (x.grad[~pixel_mask(mask)] != 0).any()


def test_decoder_and_encoder_train_the_exported_encoder_is_the_vit_alone():
    mae = build()
    mae([images()], torch.zeros(4), {"mask_step": 0.0})["loss"].backward()
    for name, p in mae.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    assert not mae.backbone.pos_embed.requires_grad  # fixed 2-D sin-cos (appendix A.1)
    assert mae.encoder is mae.backbone
    assert not any(n.startswith("decoder") for n, _ in mae.encoder.named_parameters())
    assert build(fixed_pos_embed=False).backbone.pos_embed.requires_grad
    assert mae.schedules(5, 5)["mask_step"].tolist() == [0, 1, 2, 3, 4]


def test_masks_are_a_function_of_step_and_micro_batch_and_processes_mask_their_own_images(monkeypatch):
    a, b = build(), build()
    for step in (0, 5, 2):
        a.masks(4, step, 0, torch.device("cpu"))  # whatever was drawn before
    assert torch.equal(a.masks(4, 3, 1, torch.device("cpu")), b.masks(4, 3, 1, torch.device("cpu")))
    assert not torch.equal(a.masks(4, 3, 0, torch.device("cpu")), a.masks(4, 3, 1, torch.device("cpu")))
    assert not torch.equal(a.masks(4, 3, 0, torch.device("cpu")), a.masks(4, 4, 0, torch.device("cpu")))
    torch.manual_seed(1)  # another run seed: other masks
    other = create_method("mae", create_backbone("vit_tiny_patch16_224", **VIT), image_size=8, **METHODS.get("mae").tiny)
    assert not torch.equal(other.masks(4, 3, 0, torch.device("cpu")), a.masks(4, 3, 0, torch.device("cpu")))
    # two processes with 4 images each: distinct masks, together what one process draws for all 8
    single = a.masks(8, 3, 0, torch.device("cpu"))
    monkeypatch.setattr(mae_module, "world_size", lambda: 2)
    ranks = []
    for r in range(2):
        monkeypatch.setattr(mae_module, "rank", lambda r=r: r)
        ranks.append(a.masks(4, 3, 0, torch.device("cpu")))
    assert not torch.equal(ranks[0], ranks[1])
    assert torch.equal(torch.cat(ranks), single)


def test_micro_batches_of_a_step_draw_their_own_masks(monkeypatch):
    mae, drawn = build(), []
    real = mae.masks
    monkeypatch.setattr(mae, "masks", lambda *args: drawn.append(args[1:3]) or real(*args))
    for step in (4, 4, 5, 5, 5):
        mae([images()], torch.zeros(4), {"mask_step": float(step)})
    assert drawn == [(4, 0), (4, 1), (5, 0), (5, 1), (5, 2)]


def tiny_run(run_dir, *extra):
    return load_config("mae-digits", [
        "data.name=synthetic", "data.num_samples=32", "data.image_size=8", "data.num_classes=2",
        "backbone.model_args.depth=1", "backbone.model_args.embed_dim=32", "backbone.model_args.num_heads=2",
        "method.decoder_dim=16", "method.decoder_depth=1", "method.decoder_heads=2", "trainer.batch_size=8",
        "trainer.epochs=1", "trainer.warmup_epochs=0.5", "trainer.checkpoint_every=2", "trainer.log_every=1",
        "eval.at_end=false", "eval.online=false", "run.plots=false", "run.tensorboard=false", f"run.dir={run_dir}",
        *extra])


def test_a_stopped_and_resumed_run_masks_and_ends_as_an_uninterrupted_one(tmp_path):
    from selfsup.runs.train import train

    train(tiny_run(tmp_path / "full"))
    train(tiny_run(tmp_path / "part", "trainer.max_steps=2"))
    train(tiny_run(tmp_path / "part"))  # resumes at step 2
    full, part = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "part")
    assert [r["step"] for r in part] == [1, 2, 3, 4] and [r["loss"] for r in part] == [r["loss"] for r in full]
    assert_same_tensors(final_state(tmp_path / "part")["model"], final_state(tmp_path / "full")["model"])


def test_bad_set_ups_fail_in_one_line():
    resnet = create_backbone("test_resnet", in_chans=1)
    with pytest.raises(ConfigError, match=r"^method.name=mae needs a ViT backbone .*, not test_resnet$"):
        create_method("mae", resnet, image_size=8)
    vit = create_backbone("vit_tiny_patch16_224", **VIT)
    with pytest.raises(ConfigError, match=r"built for 8x8 images, the views are 16 px: set backbone.model_args.img_size=16"):
        create_method("mae", vit, image_size=16, **METHODS.get("mae").tiny)
    with pytest.raises(ConfigError, match="leaves no visible patch of 16"):
        create_method("mae", vit, image_size=8, mask_ratio=0.95, **METHODS.get("mae").tiny)
    with pytest.raises(ConfigError, match="decoder_dim=18 must be a multiple of method.decoder_heads=2 and of 4"):
        create_method("mae", vit, image_size=8, decoder_dim=18, decoder_heads=2, decoder_depth=1)
    with pytest.raises(ConfigError, match="mask_ratio"):
        create_method("mae", vit, image_size=8, mask_ratio=1.0)
    rope = create_backbone("vit_base_patch16_rope_reg1_gap_256", **VIT)  # rotary positions only
    assert create_method("mae", rope, image_size=8, **METHODS.get("mae").tiny).backbone.pos_embed is None
    with pytest.raises(ConfigError, match=r"^method.fixed_pos_embed=true: Eva has no learned position embedding"):
        create_method("mae", rope, image_size=8, fixed_pos_embed=True, **METHODS.get("mae").tiny)
