"""NNCLR's nearest neighbour and loss (selfsup.losses.nnclr) against brute force and loops written from eq. 2
and sec. 3.3 of Dwibedi et al. 2021 (arXiv:2104.14548); 2 processes (gloo) against one on the global batch."""
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from selfsup.core.errors import ConfigError
from selfsup.losses import nearest_neighbour, nnclr_loss


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def nn_brute_force(z: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """NN(z, Q) = argmin_q ||z - q|| over L2-normalised vectors, one pair at a time."""
    rows = []
    for zi in z:
        distances = [float((unit(zi) - unit(q)).norm()) for q in support]
        rows.append(unit(support[distances.index(min(distances))]))
    return torch.stack(rows)


def nnclr_reference(nn: torch.Tensor, p: torch.Tensor, tau: float) -> float:
    """eq. 2, -log exp(NN_i . p_i / t) / sum_k exp(NN_i . p_k / t), and the symmetric term
    -log exp(NN_i . p_i / t) / sum_k exp(NN_k . p_i / t); each a mean over i, the two averaged."""
    n = len(p)

    def dot(i, k):
        return float(unit(nn[i]) @ unit(p[k])) / tau

    forward = sum(-dot(i, i) + math.log(sum(math.exp(dot(i, k)) for k in range(n))) for i in range(n)) / n
    backward = sum(-dot(i, i) + math.log(sum(math.exp(dot(k, i)) for k in range(n))) for i in range(n)) / n
    return 0.5 * (forward + backward)


def test_nearest_neighbour_is_the_brute_force_one():
    gen = torch.Generator().manual_seed(0)
    z, support = torch.randn(7, 5, generator=gen) * 3, torch.randn(20, 5, generator=gen) * 0.5
    got = nearest_neighbour(z, support)
    torch.testing.assert_close(got, nn_brute_force(z, support))
    assert torch.equal(nearest_neighbour(support[3:6], support), torch.nn.functional.normalize(support[3:6], dim=1))


def test_only_filled_rows_are_searched_and_an_empty_support_set_returns_the_query():
    gen = torch.Generator().manual_seed(1)
    z, support = torch.randn(6, 4, generator=gen), torch.randn(10, 4, generator=gen)
    for filled in (3, torch.tensor(3)):
        torch.testing.assert_close(nearest_neighbour(z, support, filled), nn_brute_force(z, support[:3]))
    torch.testing.assert_close(nearest_neighbour(z, support, torch.tensor(10)), nn_brute_force(z, support))
    torch.testing.assert_close(nearest_neighbour(z, support, torch.tensor(0)), torch.nn.functional.normalize(z, dim=1))


@pytest.mark.parametrize("n,d,tau", [(2, 3, 0.1), (6, 8, 0.1), (5, 4, 1.0)])
def test_nnclr_loss_matches_the_paper(n, d, tau):
    gen = torch.Generator().manual_seed(n * d)
    nn, p = (torch.randn(n, d, generator=gen, dtype=torch.float64) for _ in range(2))
    got = nnclr_loss(nn, p, tau)
    assert got.dtype == torch.float64
    assert abs(float(got) - nnclr_reference(nn, p, tau)) < 1e-10


def test_gradient_reaches_the_predictions_only():
    gen = torch.Generator().manual_seed(2)
    nn = torch.randn(4, 6, generator=gen).requires_grad_()
    p = torch.randn(4, 6, generator=gen).requires_grad_()
    nnclr_loss(nn, p, 0.1).backward()
    assert nn.grad is None and p.grad.abs().sum() > 0
    # scale invariant (cosine), and a perfect match of neighbours and predictions beats a shuffled one
    torch.testing.assert_close(nnclr_loss(3 * nn.detach(), 0.5 * p.detach(), 0.1), nnclr_loss(nn.detach(), p.detach(), 0.1))
    assert nnclr_loss(p.detach(), p.detach(), 0.1) < nnclr_loss(p.detach().roll(1, 0), p.detach(), 0.1)
    with pytest.raises(ConfigError, match=r"^nnclr_loss: temperature must be a finite number > 0"):
        nnclr_loss(nn, p, 0.0)


# ----------------------------------------------------------------------------- 2 processes == 1


def _worker(rank: int, world: int, tmp: str, nn: torch.Tensor, p: torch.Tensor) -> None:
    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world)
    try:
        part = slice(rank * 4, (rank + 1) * 4)
        mine = p[part].clone().requires_grad_()
        loss = nnclr_loss(nn[part], mine, 0.1, gather=True)
        loss.backward()
        torch.save({"loss": loss.detach(), "grad": mine.grad}, f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_processes_equal_one_process_on_the_global_batch(tmp_path):
    gen = torch.Generator().manual_seed(3)
    nn, p = (torch.randn(8, 5, generator=gen, dtype=torch.float64) for _ in range(2))
    mp.start_processes(_worker, args=(2, str(tmp_path), nn, p), nprocs=2, join=True, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    full = p.clone().requires_grad_()
    loss = nnclr_loss(nn, full, 0.1)
    loss.backward()
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, loss.detach(), rtol=1e-12, atol=0)
    # each rank's gradient is that of its own loss; DDP averages them over the 2 ranks
    torch.testing.assert_close(torch.cat([r["grad"] for r in ranks]) / 2, full.grad, rtol=1e-10, atol=1e-14)
