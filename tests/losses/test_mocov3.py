"""MoCo v3's loss (selfsup.losses.mocov3) against a slow loop from Chen, Xie, He 2021 (arXiv:2104.02057),
Algorithm 1, a hand-checked case, and 2 processes (gloo) on a split batch == 1 process on the whole."""
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from selfsup.core.errors import ConfigError
from selfsup.losses.mocov3 import mocov3_loss


def cos(u, v) -> float:
    return float(u @ v / (u.norm() * v.norm()))


def ctr_reference(q, k, t: float) -> float:
    """2t * mean_i -log exp(cos(q_i, k_i) / t) / sum_j exp(cos(q_i, k_j) / t)."""
    total = 0.0
    for i in range(len(q)):
        denominator = sum(math.exp(cos(q[i], k[j]) / t) for j in range(len(k)))
        total += -math.log(math.exp(cos(q[i], k[i]) / t) / denominator)
    return 2 * t * total / len(q)


def batch(n: int, d: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=gen, dtype=torch.float64) for _ in range(4)]


@pytest.mark.parametrize("n,d,t", [(3, 4, 0.2), (8, 16, 1.0)])
def test_mocov3_loss_matches_the_paper(n, d, t):
    q1, q2, k1, k2 = batch(n, d, seed=n)
    want = ctr_reference(q1, k2, t) + ctr_reference(q2, k1, t)  # summed, as Algorithm 1
    assert mocov3_loss(q1, q2, k1, k2, t).item() == pytest.approx(want, rel=1e-6)


def test_hand_checked_case():
    """Orthonormal queries equal to their keys: each row's logits are 1/t on the diagonal, 0 elsewhere."""
    q = torch.eye(3, dtype=torch.float64)
    t = 0.5
    per_row = -math.log(math.exp(2) / (math.exp(2) + 2))
    assert mocov3_loss(q, q, q, q, t).item() == pytest.approx(2 * (2 * t * per_row))


def test_keys_get_no_gradient_and_a_bad_temperature_is_refused():
    q1, q2, k1, k2 = (x.float().requires_grad_() for x in batch(4, 8, seed=0))
    mocov3_loss(q1, q2, k1, k2).backward()
    assert k1.grad is None and k2.grad is None and q1.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="mocov3_loss: temperature must be a finite number > 0, got 0"):
        mocov3_loss(q1, q2, k1, k2, 0)


def _distributed_worker(rank: int, world: int, tmp: str, tensors) -> None:
    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        n = len(tensors[0]) // world
        q1, q2, k1, k2 = (t[rank * n : (rank + 1) * n].clone() for t in tensors)
        q1.requires_grad_(), q2.requires_grad_()
        loss = mocov3_loss(q1, q2, k1, k2, 0.2, gather=True)
        loss.backward()
        # DDP averages parameter gradients over processes: compare each gradient / world.
        torch.save((loss.detach(), q1.grad / world, q2.grad / world), f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_processes_on_a_split_batch_equal_one_process_on_the_whole(tmp_path):
    tensors = [t.float() for t in batch(8, 5, seed=3)]
    # fork, not spawn: the children reuse the imported modules (a spawn re-imports for ~10 s).
    mp.start_processes(_distributed_worker, args=(2, str(tmp_path), tensors), nprocs=2, start_method="fork")
    q1, q2 = (t.clone().requires_grad_() for t in tensors[:2])
    loss = mocov3_loss(q1, q2, *tensors[2:], 0.2)
    loss.backward()
    losses = []
    for rank in range(2):
        got_loss, grad1, grad2 = torch.load(tmp_path / f"rank{rank}.pt")
        losses.append(got_loss)
        assert torch.allclose(grad1, q1.grad[rank * 4 : (rank + 1) * 4], atol=1e-6)
        assert torch.allclose(grad2, q2.grad[rank * 4 : (rank + 1) * 4], atol=1e-6)
    assert torch.allclose(sum(losses) / 2, loss.detach(), atol=1e-6)  # the logged mean over processes
    assert not torch.allclose(losses[0], losses[1])  # each process's own queries
