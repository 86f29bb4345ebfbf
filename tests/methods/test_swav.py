"""SwAV (Caron et al. 2020, arXiv:2006.09882): multi-crop views, the prototypes (normalised after every step,
frozen at first), the codes' queue, 2 processes (gloo) against one on the global batch, and a resumed run
ending with the same queue. The losses: tests/losses/test_sinkhorn.py, tests/losses/test_swav.py."""
import pytest
import torch

from selfsup.config import load_config
from selfsup.core.errors import ConfigError
from selfsup.data.augment import ViewMaker
from selfsup.losses import sinkhorn_knopp, swav_loss
from selfsup.methods import METHODS, create_method
from selfsup.methods.swav import run_per_resolution
from selfsup.models.backbones import create_backbone
from selfsup.runs.train import train
from support import TINY, assert_same_tensors, final_state
from support.methods import check_queue_two_processes_equal_one

SIZE, LOCAL = 16, 2
pytestmark = pytest.mark.usefixtures("one_thread")


def build(**overrides):
    torch.manual_seed(0)
    backbone = create_backbone("test_resnet", small_stem=True)
    return create_method("swav", backbone, image_size=SIZE, **{**METHODS.get("swav").tiny, **overrides}).train()


def make_views(method, batch: int, seed: int):
    images = torch.randint(0, 256, (batch, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    views = ViewMaker(method.views, mean=(0.5,) * 3, std=(0.25,) * 3)(images, torch.Generator().manual_seed(seed))
    return [v.to(torch.get_default_dtype()) for v in views]


def values_at(method, step: int, total: int = 20, per_epoch: int = 5) -> dict[str, float]:
    return {k: float(v[step]) for k, v in method.schedules(total_steps=total, steps_per_epoch=per_epoch).items()}


def scores_of(method, views):
    """Every view's prototype scores [B, K], recomputed the paper's way (normalise, then the prototypes)."""
    z = torch.nn.functional.normalize(method.projector(run_per_resolution(method.backbone, views)), dim=1)
    return list((z @ method.prototypes.weight.T).chunk(len(views))), z


def test_views_are_two_global_and_n_local_crops_with_simclr_colour():
    method = build(local_crop_size=8, num_local_crops=3, color_strength=1.0)
    (glob, n_glob), (loc, n_loc) = method.views
    assert (n_glob, n_loc, glob.size, loc.size) == (2, 3, SIZE, 8)
    assert tuple(glob.crop_scale) == (0.14, 1.0) and tuple(loc.crop_scale) == (0.05, 0.14)
    assert (glob.brightness, glob.contrast, glob.saturation, glob.hue, glob.jitter_p, glob.grayscale_p) == (0.8, 0.8, 0.8, 0.2, 0.8, 0.2)
    assert [v.shape[-1] for v in make_views(method, 2, 0)] == [SIZE] * 2 + [8] * 3
    assert len(build(num_local_crops=0).views) == 1


def test_backbone_runs_once_per_resolution():
    method = build()
    calls = []
    method.backbone.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    method(make_views(method, 4, 0), torch.zeros(4), values_at(method, 0))
    assert calls == [(8, 3, SIZE, SIZE), (LOCAL * 4, 3, SIZE // 2, SIZE // 2)]


def test_schedules_freeze_the_prototypes_then_start_the_queue():
    method = build(freeze_prototypes_epochs=1, queue_start_epochs=2.5, queue_length=8)
    sched = method.schedules(total_steps=20, steps_per_epoch=4)
    assert sched["freeze_prototypes"].tolist() == [1.0] * 4 + [0.0] * 16
    assert sched["queue_active"].tolist() == [0.0] * 10 + [1.0] * 10
    assert not build(queue_length=0).schedules(20, 4)["queue_active"].any()


def test_prototypes_are_frozen_in_the_window_and_normalised_after_every_step():
    method = build(freeze_prototypes_epochs=1)
    proto = method.prototypes.weight
    torch.testing.assert_close(proto.norm(dim=1), torch.ones(len(proto)))  # from the start
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5, momentum=0.9, weight_decay=0.1)
    for step in (0, 4, 5, 6):  # epoch 0 (steps 0-4) is frozen
        values, before = values_at(method, step), proto.detach().clone()
        head_before = method.projector[0].weight.detach().clone()
        method(make_views(method, 4, step), torch.zeros(4), values)["loss"].backward()
        assert proto.grad.abs().sum() > 0  # the loss reaches the prototypes ...
        method.on_after_backward(values)
        frozen = step < 5
        assert (proto.grad is None) == frozen  # ... but not their update while frozen
        opt.step()
        opt.zero_grad(set_to_none=True)
        moved_off_the_sphere = float((proto.detach().norm(dim=1) - 1).abs().max())
        method.on_step_end(values)
        assert not torch.equal(method.projector[0].weight, head_before)  # the rest trains throughout
        if frozen:
            assert torch.equal(proto, before), step  # no gradient, no weight decay, no momentum
        else:
            assert moved_off_the_sphere > 1e-4 and not torch.equal(proto, before)
            torch.testing.assert_close(proto.norm(dim=1), torch.ones(len(proto)), rtol=0, atol=1e-6)


def test_codes_come_from_sinkhorn_with_the_queue_in_front_once_it_is_full():
    method = build(queue_length=10, epsilon=0.05, sinkhorn_iterations=3)
    ring, ptr, filled = torch.zeros(2, 10, 16), 0, 0
    for step in range(5):  # batch 4, queue 10: full after step 2 (rows wrap around), used from step 3
        views, values = make_views(method, 4, step), values_at(method, step)
        queue_before = method.queue.clone()
        out = method(views, torch.zeros(4), values)
        with torch.no_grad():
            scores, z = scores_of(method, views)
            codes = []
            for i in range(2):
                s = scores[i]
                if filled == 10:
                    s = torch.cat([queue_before[i] @ method.prototypes.weight.T, s])
                codes.append(sinkhorn_knopp(s, 0.05, 3)[-4:])
            want = swav_loss(scores, codes, 0.1)
        torch.testing.assert_close(out["loss"], want, rtol=1e-5, atol=1e-6)
        entropy = -sum((q * q.log()).sum(1).mean() for q in codes) / 2
        torch.testing.assert_close(out["code_entropy"], entropy, rtol=1e-4, atol=1e-5)
        assert out["embeddings"].shape == (8, 16) and out["features"].shape[0] == 8
        method.on_step_end(values)
        for row in range(4):  # the global crops' embeddings, oldest rows overwritten first
            ring[:, ptr] = z[:8].view(2, 4, 16)[:, row]
            ptr, filled = (ptr + 1) % 10, min(filled + 1, 10)
        torch.testing.assert_close(method.queue, ring, rtol=0, atol=1e-6)
        assert (int(method.queue_ptr), int(method.queue_count)) == (ptr, filled)
    inactive = build(queue_length=10)
    inactive(make_views(inactive, 4, 0), torch.zeros(4), {**values_at(inactive, 0), "queue_active": 0.0})
    inactive.on_step_end(values_at(inactive, 0))
    assert int(inactive.queue_count) == 0 and not inactive.queue.any()


def test_no_more_prototypes_than_embedding_dimensions_is_refused():
    """K <= d unit prototypes leave a unit embedding that scores them all alike (orthogonal to all when K < d):
    the uniform prediction, loss ln K, is then reachable; swav-digits with K 100 < d 128 sat there."""
    for k in (8, 16):
        with pytest.raises(ConfigError, match=rf"^method.prototypes={k} must exceed method.proj_dim=16"):
            build(prototypes=k, proj_dim=16)
    c = torch.nn.functional.normalize(torch.randn(8, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    z = torch.linalg.svd(c).Vh[-1]  # a unit vector orthogonal to all 8 prototypes in R^16
    assert torch.allclose(c @ z, torch.zeros(8), atol=1e-6)
    build(prototypes=17, proj_dim=16)


def test_a_queue_shorter_than_the_batch_is_refused():
    method = build(queue_length=4)
    with pytest.raises(ConfigError, match=r"^method.queue_length=4 is smaller than the 6 embeddings"):
        method(make_views(method, 6, 0), torch.zeros(6), values_at(method, 0))


# ----------------------------------------------------------------------------- 2 processes == 1

GLOBAL, STEPS = 8, 4  # queue 12: full after 2 steps, in front of the codes from step 3


@pytest.mark.distributed
def test_two_processes_equal_one_process_on_the_global_batch(tmp_path):
    check_queue_two_processes_equal_one(tmp_path, lambda: build(queue_length=12), make_views, GLOBAL, STEPS,
                                        values=values_at)


# ----------------------------------------------------------------------------- resume


def test_a_resumed_run_ends_with_the_same_queue_and_prototypes(tmp_path):
    def run(run_dir, *extra):  # 2 epochs of 2 steps of 16; the queue (32) fills in steps 2-3, is used in 3-4
        train(load_config("swav-digits", [
            *TINY, f"run.dir={run_dir}", "data.num_samples=32", "method.prototypes=24", "method.num_local_crops=2",
            "method.queue_length=32", "method.queue_start_epochs=0.5", "method.freeze_prototypes_epochs=0.5",
            "eval.online=false", "run.plots=false", *extra]))

    run(tmp_path / "straight", "resume=never")
    run(tmp_path / "split", "trainer.max_steps=3")  # stopped after step 3 (the queue: full, in use)
    run(tmp_path / "split")  # resume=auto: step 4
    straight, split = final_state(tmp_path / "straight"), final_state(tmp_path / "split")
    assert straight["step"] == split["step"] == 4
    assert_same_tensors(straight["model"], split["model"], "model")  # queue, pointer, prototypes included
    assert int(straight["model"]["queue_count"]) == 32 and straight["model"]["queue"].abs().sum() > 0
