"""SupCon's L^sup_out (selfsup.losses.supcon) against a slow loop written from Khosla et al. 2020
(arXiv:2004.11362) eq. 2; the identity with NT-Xent when every label is distinct; anchors without a
positive; 2 processes (gloo) on a split batch == 1 process on the whole."""
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from selfsup.core.errors import ConfigError
from selfsup.losses import nt_xent, supcon_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def supcon_reference(z: torch.Tensor, labels: list[int], t: float) -> float:
    """Eq. 2: L_i = -1/|P(i)| sum_{p in P(i)} log(exp(z_i.z_p/t) / sum_{a in A(i)} exp(z_i.z_a/t)), A(i) = I \\ {i},
    P(i) = {p in A(i) : y_p = y_i}; the mean over anchors with |P(i)| > 0 (0 if there is none)."""
    zs = [(v / v.norm()).tolist() for v in z]

    def dot(u, v):
        return sum(a * b for a, b in zip(u, v))

    losses = []
    for i in range(len(zs)):
        others = [a for a in range(len(zs)) if a != i]
        positives = [p for p in others if labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(math.exp(dot(zs[i], zs[a]) / t) for a in others)
        losses.append(-sum(math.log(math.exp(dot(zs[i], zs[p]) / t) / denominator) for p in positives) / len(positives))
    return sum(losses) / len(losses) if losses else 0.0


@pytest.mark.parametrize("m, d, classes, t", [(8, 4, 3, 0.1), (12, 7, 2, 0.5), (10, 5, 10, 1.0), (16, 3, 4, 0.07)])
def test_supcon_matches_the_paper(m, d, classes, t):
    g = torch.Generator().manual_seed(m * d + classes)
    z = torch.randn(m, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, classes, (m,), generator=g)
    want = supcon_reference(z, labels.tolist(), t)
    assert supcon_loss(z, labels, t).item() == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_supcon_with_distinct_labels_is_nt_xent_on_two_views():
    g = torch.Generator().manual_seed(1)
    z_a, z_b = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    ids = torch.arange(6)
    for t in (0.1, 0.5):
        got = supcon_loss(torch.cat([z_a, z_b]), torch.cat([ids, ids]), t)
        torch.testing.assert_close(got, nt_xent(z_a, z_b, t))
    # with shared labels the extra positives change it
    shared = torch.tensor([0, 0, 1, 1, 2, 2])
    assert not torch.allclose(supcon_loss(torch.cat([z_a, z_b]), torch.cat([shared, shared]), 0.1), nt_xent(z_a, z_b, 0.1))


def test_anchors_without_a_positive_are_left_out():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(5, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 2, 3])  # anchors 2, 3, 4 have no positive
    got = supcon_loss(z, labels, 0.2)
    assert torch.isfinite(got) and got.item() == pytest.approx(supcon_reference(z, labels.tolist(), 0.2), rel=1e-9)
    # the same as the loss of anchors 0 and 1 alone, with the others still in the denominators
    assert got.item() != pytest.approx(supcon_loss(z[:2], labels[:2], 0.2).item())
    lone = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    zero = supcon_loss(lone, torch.arange(4), 0.2)  # one view, every label distinct: no positive at all
    zero.backward()
    assert zero.item() == 0.0 and torch.equal(lone.grad, torch.zeros_like(lone))


def test_gradient_and_bad_arguments():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    assert torch.autograd.gradcheck(lambda x: supcon_loss(x, labels, 0.3), (z,))
    with pytest.raises(ConfigError, match="supcon_loss: temperature must be a finite number > 0, got 0"):
        supcon_loss(z, labels, 0)
    with pytest.raises(ValueError, match=r"labels \[M\]"):
        supcon_loss(z, labels[:3], 0.1)


def test_scale_invariant_and_aligned_classes_score_lower():
    g = torch.Generator().manual_seed(4)
    z, labels = torch.randn(12, 8, generator=g), torch.arange(12) % 3
    torch.testing.assert_close(supcon_loss(z, labels), supcon_loss(5 * z, labels))
    clustered = torch.eye(8)[labels] + 0.05 * torch.randn(12, 8, generator=g)
    assert supcon_loss(clustered, labels) < supcon_loss(z, labels)


# ----------------------------------------------------------------------------- 2 processes == 1


def global_batch():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(12, 5, generator=g)
    # rank 0's rows 0-5, rank 1's rows 6-11; labels 9 and 8 (rows 0, 1) have no positive anywhere: rank 0
    # holds 4 anchors with a positive, rank 1 holds 6, so the mean needs the global count
    labels = torch.tensor([9, 8, 1, 1, 2, 3, 0, 0, 2, 3, 1, 0])
    return z, labels


def _worker(rank: int, world: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        z, labels = global_batch()
        part = slice(rank * 6, (rank + 1) * 6)
        mine = z[part].clone().requires_grad_()
        loss = supcon_loss(mine, labels[part], 0.2, gather=True)
        loss.backward()
        torch.save((loss.detach(), mine.grad), f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_processes_on_a_split_batch_equal_one_process_on_the_whole(tmp_path):
    # fork, not spawn: the children reuse the imported modules
    mp.start_processes(_worker, args=(2, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    z, labels = global_batch()
    z.requires_grad_()
    loss = supcon_loss(z, labels, 0.2)
    loss.backward()
    (loss0, g0), (loss1, g1) = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    torch.testing.assert_close((loss0 + loss1) / 2, loss.detach(), rtol=1e-5, atol=1e-6)
    # each rank's gradient is that of its own loss; DDP averages them over the 2 ranks
    torch.testing.assert_close(torch.cat([g0, g1]) / 2, z.grad, rtol=1e-4, atol=1e-6)
