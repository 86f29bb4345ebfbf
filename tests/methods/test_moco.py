"""MoCo v2: its update rules (queue, key encoder, shuffle-BN), and 2-process (gloo) runs against one
process on the global batch (with the DCL / DCLW losses' gather). The losses: tests/losses/test_moco.py,
tests/losses/test_decoupled.py."""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from selfsup.losses.decoupled import dcl, dclw
from selfsup.losses.moco import infonce
from selfsup.methods import create_method
from selfsup.models.backbones import create_backbone

SIZE = 16


def build_moco(**overrides):
    torch.manual_seed(0)
    backbone = create_backbone("test_resnet", small_stem=True)
    defaults = dict(queue_size=10, proj_hidden_dim=16, proj_dim=8, bn_splits=2)
    return create_method("moco", backbone, image_size=SIZE, **{**defaults, **overrides}).train()


def views(batch: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, SIZE, SIZE, generator=gen) for _ in range(2)]


def test_queue_is_a_ring_buffer_that_overwrites_the_oldest_keys_first():
    moco = build_moco(queue_size=10)
    ring, ptr = moco.queue.clone(), 0
    written = []
    for step, m in enumerate([4, 4, 4, 3, 10, 4]):  # wraps at steps 2, 4, 5 (K = 10, not a multiple)
        keys = torch.randn(m, 8) + 100 * step
        moco.enqueue(keys)
        for row in keys:  # the rule, one key at a time
            ring[ptr], ptr = row, (ptr + 1) % 10
        written += list(keys)
        assert torch.equal(moco.queue, ring) and int(moco.queue_ptr) == ptr
        newest = torch.stack(written[-10:])  # the last K keys written are all there: none dropped
        assert all((moco.queue == row).all(1).any() for row in newest)


@pytest.mark.parametrize("head_bn", [False, True])
def test_step_uses_the_old_queue_then_enqueues_the_keys_and_updates_the_key_encoder(head_bn):
    moco = build_moco(queue_size=10, shuffle_bn=False, head_bn=head_bn)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in moco.head.modules()) == head_bn
    opt = torch.optim.SGD([p for p in moco.parameters() if p.requires_grad], lr=0.5)
    schedule = moco.schedules(total_steps=6, steps_per_epoch=3)["ema_momentum"]
    assert schedule[0] == pytest.approx(0.99) and schedule[-1] < 1 and all(schedule[1:] >= schedule[:-1])
    ring, ptr = moco.queue.clone(), 0
    for step in range(4):  # batch 4, K = 10: the third step wraps around
        x_q, x_k = views(4, step)
        queue_before = moco.queue.clone()
        key_state = [p.clone() for p in moco.key_backbone.parameters()] + [p.clone() for p in moco.key_head.parameters()]
        with torch.no_grad():
            expected_k = F.normalize(moco.key_head(moco.key_backbone(x_k)), dim=1)
        out = moco([x_q, x_k], torch.zeros(4), {"ema_momentum": float(schedule[step])})
        q = moco.head(moco.backbone(x_q))
        assert torch.allclose(out["loss"], infonce(q, expected_k, queue_before, 0.2), atol=1e-6)
        opt.zero_grad()
        out["loss"].backward()
        assert all(p.grad is None and not p.requires_grad for p in moco.key_backbone.parameters())
        assert all(p.grad is None and not p.requires_grad for p in moco.key_head.parameters())
        opt.step()
        moco.on_step_end({"ema_momentum": float(schedule[step])})
        m = float(schedule[step])
        query = list(moco.backbone.parameters()) + list(moco.head.parameters())
        key = list(moco.key_backbone.parameters()) + list(moco.key_head.parameters())
        for old, new, src in zip(key_state, key, query):
            torch.testing.assert_close(new, m * old + (1 - m) * src, rtol=1e-6, atol=1e-7)
        for buf_k, buf_q in zip([*moco.key_backbone.buffers(), *moco.key_head.buffers()],
                                [*moco.backbone.buffers(), *moco.head.buffers()]):
            assert torch.equal(buf_k, buf_q)  # BN statistics are copied, as in MoCo's code
        for row in expected_k:
            ring[ptr], ptr = row, (ptr + 1) % 10
        torch.testing.assert_close(moco.queue, ring, rtol=0, atol=1e-6)
        assert int(moco.queue_ptr) == ptr


@pytest.mark.parametrize("head_bn", [False, True])
def test_shuffle_bn_encodes_random_groups_and_returns_keys_in_input_order(head_bn):
    moco = build_moco(bn_splits=3, head_bn=head_bn)
    x = views(12, 0)[1]
    torch.manual_seed(7)
    k, k_all = moco.keys(x)
    torch.manual_seed(7)
    perm = torch.randperm(12)
    expected = torch.empty(12, 8)
    with torch.no_grad():
        for group in perm.tensor_split(3):  # each group alone through the key encoder (its own BN statistics)
            expected[group] = F.normalize(moco.key_head(moco.key_backbone(x[group])), dim=1)
        whole = F.normalize(moco.key_head(moco.key_backbone(x)), dim=1)
    torch.testing.assert_close(k, expected, rtol=0, atol=1e-6)
    assert torch.equal(k, k_all) and not k.requires_grad
    assert not torch.allclose(k, whole, atol=1e-3)  # the groups' statistics differ from the batch's


def test_symmetric_moco_enqueues_both_views_and_rejects_a_small_queue():
    moco = build_moco(queue_size=10, symmetric=True)
    out = moco(views(4, 0), torch.zeros(4), {"ema_momentum": 0.9})
    assert torch.isfinite(out["loss"])
    moco.on_step_end({"ema_momentum": 0.9})
    assert int(moco.queue_ptr) == 8
    with pytest.raises(Exception, match="queue_size"):
        moco(views(6, 1), torch.zeros(6), {"ema_momentum": 0.9})


# ----------------------------------------------------------------------------- 2 processes


def _worker(rank: int, world: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world)
    try:
        results = {}
        gen = torch.Generator().manual_seed(0)
        z_a, z_b = torch.randn(8, 5, generator=gen), torch.randn(8, 5, generator=gen)
        part = slice(rank * 4, (rank + 1) * 4)
        for name, fn in LOSSES.items():
            a, b = z_a[part].clone().requires_grad_(), z_b[part].clone().requires_grad_()
            loss = fn(a, b, gather=True)
            loss.backward()
            results[name] = (loss.detach(), a.grad, b.grad)
        moco = build_moco(queue_size=12, bn_splits=2)
        x_q, x_k = views(8, 3)
        torch.manual_seed(11)  # the permutation is drawn on rank 0 and broadcast
        results["keys"] = moco.keys(x_k[part])
        torch.manual_seed(12)
        moco([x_q[part], x_k[part]], torch.zeros(4), {"ema_momentum": 0.9})
        moco.on_step_end({"ema_momentum": 0.9})
        results["queue"] = moco.queue.clone()
        torch.save(results, f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


LOSSES = {"dcl": lambda a, b, **kw: dcl(a, b, 0.2, **kw), "dclw": lambda a, b, **kw: dclw(a, b, 0.2, 0.5, **kw)}


@pytest.mark.distributed
def test_two_processes_equal_one_process_on_the_global_batch(tmp_path):
    # fork: the children inherit the imported modules (spawn would re-import torch and timm, ~10 s)
    mp.start_processes(_worker, args=(2, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    gen = torch.Generator().manual_seed(0)
    z_a = torch.randn(8, 5, generator=gen).requires_grad_()
    z_b = torch.randn(8, 5, generator=gen).requires_grad_()
    for name, fn in LOSSES.items():
        z_a.grad = z_b.grad = None
        loss = fn(z_a, z_b)
        loss.backward()
        (loss0, ga0, gb0), (loss1, ga1, gb1) = ranks[0][name], ranks[1][name]
        torch.testing.assert_close((loss0 + loss1) / 2, loss.detach(), rtol=1e-5, atol=1e-6)
        # each rank's gradient is that of its own loss; DDP averages them over the 2 ranks
        torch.testing.assert_close(torch.cat([ga0, ga1]) / 2, z_a.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(torch.cat([gb0, gb1]) / 2, z_b.grad, rtol=1e-4, atol=1e-6)
    # MoCo: shuffle-BN over 2 processes (1 group each) = 1 process with bn_splits=2, same permutation;
    # every rank ends with the same queue, holding the global batch's keys.
    moco = build_moco(queue_size=12, bn_splits=2)
    x_q, x_k = views(8, 3)
    torch.manual_seed(11)
    _, k_all = moco.keys(x_k)
    torch.manual_seed(12)
    moco([x_q, x_k], torch.zeros(8), {"ema_momentum": 0.9})
    moco.on_step_end({"ema_momentum": 0.9})
    (k0, all0), (k1, all1) = ranks[0]["keys"], ranks[1]["keys"]
    for got in (all0, all1, torch.cat([k0, k1])):
        torch.testing.assert_close(got, k_all, rtol=0, atol=1e-6)
    assert torch.equal(ranks[0]["queue"], ranks[1]["queue"])
    torch.testing.assert_close(ranks[0]["queue"], moco.queue, rtol=0, atol=1e-6)
