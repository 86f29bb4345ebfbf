"""NNCLR (Dwibedi et al. 2021, arXiv:2104.14548): the step's loss over the support set's nearest neighbours, the
support set as a FIFO queue of the global batch, 2 processes (gloo) against one on the global batch, and a
resumed run ending with the same support set. The losses: tests/losses/test_nnclr.py."""
import pytest
import torch
import torch.nn.functional as F

from selfsup.config import load_config
from selfsup.core.errors import ConfigError
from selfsup.data.augment import ViewMaker
from selfsup.losses import nnclr_loss
from selfsup.methods import METHODS, create_method
from selfsup.methods.byol import byol_views
from selfsup.models.backbones import create_backbone
from selfsup.runs.train import train
from support import TINY, assert_same_tensors, final_state
from support.methods import check_queue_two_processes_equal_one

SIZE = 16
pytestmark = pytest.mark.usefixtures("one_thread")


def build(**overrides):
    torch.manual_seed(0)
    backbone = create_backbone("test_resnet", small_stem=True)
    return create_method("nnclr", backbone, image_size=SIZE, **{**METHODS.get("nnclr").tiny, **overrides}).train()


def make_views(method, batch: int, seed: int):
    images = torch.randint(0, 256, (batch, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    views = ViewMaker(method.views, mean=(0.5,) * 3, std=(0.25,) * 3)(images, torch.Generator().manual_seed(seed))
    return [v.to(torch.get_default_dtype()) for v in views]


def brute_force_neighbours(z: torch.Tensor, support: list[torch.Tensor]) -> torch.Tensor:
    """The most cosine-similar support row of every z row, one pair at a time; z itself when Q is empty."""
    if not support:
        return F.normalize(z, dim=1)
    rows = []
    for zi in z:
        sims = [float(F.cosine_similarity(zi, q, dim=0)) for q in support]
        rows.append(F.normalize(support[sims.index(max(sims))], dim=0))
    return torch.stack(rows)


def test_views_and_heads_are_the_papers():
    method = build()
    assert method.views == byol_views(SIZE)  # "the same augmentations as BYOL"
    linear = [m for m in method.projector if isinstance(m, torch.nn.Linear)]
    assert len(linear) == 3 and isinstance(method.projector[-1], torch.nn.BatchNorm1d)  # 3 layers, BN
    assert [m.out_features for m in method.predictor if isinstance(m, torch.nn.Linear)] == [32, 16]


def test_neighbours_from_the_support_set_are_the_positives_and_the_queue_is_fifo():
    method = build(queue_length=10)
    support: list[torch.Tensor] = []  # what the support set holds, oldest first
    for step in range(4):  # batch 4, queue 10: the first step has an empty support set, the fourth wraps
        views = make_views(method, 4, step)
        out = method(views, torch.zeros(4), {})
        with torch.no_grad():
            z = method.projector(method.backbone(torch.cat(views)))
            p = method.predictor(z)
        z_a, z_b = z.detach().chunk(2)
        p_a, p_b = p.detach().chunk(2)
        nn_a, nn_b = brute_force_neighbours(z_a, support), brute_force_neighbours(z_b, support)
        want = 0.5 * (nnclr_loss(nn_a, p_b, 0.1) + nnclr_loss(nn_b, p_a, 0.1))
        torch.testing.assert_close(out["loss"].detach(), want, rtol=1e-5, atol=1e-6)
        method.on_step_end({})
        support = (support + list(F.normalize(z_a, dim=1)))[-10:]  # the first view's projections enter
        held = [method.queue[i] for i in range(int(method.queue_count))]
        assert int(method.queue_count) == len(support)
        for row in support:  # every projection of the last 10 is held, whatever its slot in the ring
            assert min(float((row - q).abs().max()) for q in held) < 1e-6
    assert int(method.queue_ptr) == 16 % 10


def test_a_queue_shorter_than_the_batch_is_refused():
    method = build(queue_length=4)
    with pytest.raises(ConfigError, match=r"^method.queue_length=4 is smaller than the 6 projections"):
        method(make_views(method, 6, 0), torch.zeros(6), {})


# ----------------------------------------------------------------------------- 2 processes == 1

GLOBAL, STEPS = 8, 3  # queue 12: the second step searches 8 rows, the third 12 after a wrap


@pytest.mark.distributed
def test_two_processes_equal_one_process_on_the_global_batch(tmp_path):
    check_queue_two_processes_equal_one(tmp_path, lambda: build(queue_length=12), make_views, GLOBAL, STEPS)


# ----------------------------------------------------------------------------- resume


def test_a_resumed_run_ends_with_the_same_support_set(tmp_path):
    def run(run_dir, *extra):  # 2 epochs of 2 steps of 16; the support set (40) wraps in step 3
        train(load_config("nnclr-digits", [
            *TINY, f"run.dir={run_dir}", "data.num_samples=32", "method.pred_hidden_dim=32", "method.queue_length=40",
            "eval.online=false", "run.plots=false", *extra]))

    run(tmp_path / "straight", "resume=never")
    run(tmp_path / "split", "trainer.max_steps=3")  # stopped after step 3
    run(tmp_path / "split")  # resume=auto: step 4
    straight, split = final_state(tmp_path / "straight"), final_state(tmp_path / "split")
    assert straight["step"] == split["step"] == 4
    assert_same_tensors(straight["model"], split["model"], "model")  # support set and pointer included
    assert int(straight["model"]["queue_count"]) == 40 and int(straight["model"]["queue_ptr"]) == 64 % 40
