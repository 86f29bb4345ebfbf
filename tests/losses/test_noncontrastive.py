"""BYOL, SimSiam, Barlow Twins, VICReg losses (selfsup.losses.noncontrastive) against slow loops written
from the papers' equations, stop-gradients, fp32 statistics, and 2 processes == 1 process."""
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from selfsup.losses.noncontrastive import (
    barlow_twins_loss,
    byol_loss,
    simsiam_loss,
    vicreg_loss,
    vicreg_terms,
    vicreg_variance,
)

pytestmark = pytest.mark.usefixtures("seeded")


def pairs(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    z_a = torch.randn(n, d, generator=gen, dtype=torch.float64) * 2 + 0.5
    return z_a, z_a + torch.randn(n, d, generator=gen, dtype=torch.float64)


# ----------------------------------------------------------------------------- slow references


def cos(u, v) -> float:
    return float(sum(a * b for a, b in zip(u, v)) / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v))))


def byol_reference(p, z) -> float:
    """Grill et al. 2020, eq. 2: || p/||p|| - z/||z|| ||^2, averaged over the batch."""
    total = 0.0
    for p_i, z_i in zip(p.tolist(), z.tolist()):
        np_, nz = math.sqrt(sum(a * a for a in p_i)), math.sqrt(sum(b * b for b in z_i))
        total += sum((a / np_ - b / nz) ** 2 for a, b in zip(p_i, z_i))
    return total / len(p)


def simsiam_reference(p, z) -> float:
    """Chen & He 2021, eq. 1: D(p, z) = -p/||p|| . z/||z||, averaged over the batch."""
    return -sum(cos(p_i, z_i) for p_i, z_i in zip(p.tolist(), z.tolist())) / len(p)


def barlow_reference(z_a, z_b, lambd: float) -> float:
    """Zbontar et al. 2021, eq. 1-2, with z centred along the batch (b: sample, i/j: dimension)."""
    a, b = z_a.tolist(), z_b.tolist()
    n, d = len(a), len(a[0])
    mean_a = [sum(a[s][i] for s in range(n)) / n for i in range(d)]
    mean_b = [sum(b[s][i] for s in range(n)) / n for i in range(d)]
    a = [[a[s][i] - mean_a[i] for i in range(d)] for s in range(n)]
    b = [[b[s][i] - mean_b[i] for i in range(d)] for s in range(n)]
    norm_a = [math.sqrt(sum(a[s][i] ** 2 for s in range(n))) for i in range(d)]
    norm_b = [math.sqrt(sum(b[s][j] ** 2 for s in range(n))) for j in range(d)]
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[s][i] * b[s][j] for s in range(n)) / (norm_a[i] * norm_b[j])
            loss += (1 - c_ij) ** 2 if i == j else lambd * c_ij**2
    return loss


def vicreg_reference(z_a, z_b, lam: float, mu: float, nu: float, gamma: float = 1.0, eps: float = 1e-4) -> float:
    """Bardes et al. 2022, eq. 1-6, reduced as the authors' code: s averaged over samples and
    dimensions, v averaged over the two branches, c summed over them."""
    a, b = z_a.tolist(), z_b.tolist()
    n, d = len(a), len(a[0])

    def variance(z):
        total = 0.0
        for j in range(d):
            m = sum(z[s][j] for s in range(n)) / n
            std = math.sqrt(sum((z[s][j] - m) ** 2 for s in range(n)) / (n - 1) + eps)
            total += max(0.0, gamma - std)
        return total / d

    def covariance(z):
        m = [sum(z[s][j] for s in range(n)) / n for j in range(d)]
        total = 0.0
        for i in range(d):
            for j in range(d):
                if i != j:
                    c_ij = sum((z[s][i] - m[i]) * (z[s][j] - m[j]) for s in range(n)) / (n - 1)
                    total += c_ij**2
        return total / d

    invariance = sum((a[s][j] - b[s][j]) ** 2 for s in range(n) for j in range(d)) / (n * d)
    return lam * invariance + mu * (variance(a) + variance(b)) / 2 + nu * (covariance(a) + covariance(b))


# ----------------------------------------------------------------------------- losses


@pytest.mark.parametrize("n,d", [(2, 3), (8, 16), (5, 7)])
def test_losses_match_the_papers(n, d):
    z_a, z_b = pairs(n, d, seed=n * d)
    checks = [
        (byol_loss(z_a, z_b), byol_reference(z_a, z_b)),
        (simsiam_loss(z_a, z_b), simsiam_reference(z_a, z_b)),
        (barlow_twins_loss(z_a, z_b, 0.05, eps=0.0), barlow_reference(z_a, z_b, 0.05)),
        (barlow_twins_loss(z_a, z_b, eps=0.0), barlow_reference(z_a, z_b, 5e-3)),
        (vicreg_loss(z_a, z_b), vicreg_reference(z_a, z_b, 25, 25, 1)),
        (vicreg_loss(0.1 * z_a, 0.1 * z_b, 2.0, 3.0, 5.0), vicreg_reference(0.1 * z_a, 0.1 * z_b, 2.0, 3.0, 5.0)),
    ]
    for got, want in checks:
        assert got.ndim == 0
        assert math.isclose(float(got), want, rel_tol=1e-5, abs_tol=1e-6), (float(got), want)


def test_byol_and_simsiam_stop_the_gradient_at_the_target():
    p, z = torch.randn(6, 8, requires_grad=True), torch.randn(6, 8, requires_grad=True)
    for loss_fn in (byol_loss, simsiam_loss):
        p.grad = None
        loss_fn(p, z).backward()
        assert z.grad is None, f"{loss_fn.__name__} sent a gradient into its target"
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_byol_loss_is_simsiams_shifted_and_scaled():
    p, z = torch.randn(6, 8), torch.randn(6, 8)
    assert torch.allclose(byol_loss(p, z), 2 + 2 * simsiam_loss(p, z), atol=1e-6)
    assert byol_loss(p, 3 * p) < 1e-6


def decorrelated(n: int, d: int) -> torch.Tensor:
    """[n, d]: every column zero-mean with (biased) variance 1, columns mutually orthogonal."""
    x = torch.randn(n, d, dtype=torch.float64)
    q, _ = torch.linalg.qr(x - x.mean(dim=0))
    return q * math.sqrt(n)


def test_barlow_twins_is_zero_exactly_for_identical_standardised_decorrelated_embeddings():
    z = decorrelated(16, 6)
    assert float(barlow_twins_loss(z, z, eps=0.0)) < 1e-12
    assert float(barlow_twins_loss(3 * z + 1, z, eps=0.0)) < 1e-12  # the batch standardisation
    z_b = z.clone()
    z_b[:, 1] = z[:, 0]  # dims 0 and 1 of z_b correlated, dim 1 of z_b uncorrelated with z's dim 1
    assert float(barlow_twins_loss(z, z_b, eps=0.0)) > 0.9
    # lambda weighs only the off-diagonal: here C has one on- and one off-diagonal 1 swapped.
    assert math.isclose(float(barlow_twins_loss(z, z_b, 0.0, eps=0.0)), 1.0, abs_tol=1e-9)
    assert math.isclose(float(barlow_twins_loss(z, z_b, 0.5, eps=0.0)), 1.5, abs_tol=1e-9)


def test_vicreg_terms():
    z = decorrelated(16, 6)
    inv, var, cov = vicreg_terms(z, z)
    assert float(inv) == 0 and float(cov) < 1e-20  # identical and decorrelated
    wide = torch.randn(32, 8) * 3  # every dimension's std well above 1
    assert wide.std(dim=0).min() >= 1
    assert float(vicreg_variance(wide)) == 0
    assert float(vicreg_loss(wide, torch.randn(32, 8) * 3, 0.0, 1.0, 0.0)) == 0
    narrow = torch.randn(32, 8) * 0.1
    expected = (1 - torch.sqrt(narrow.var(dim=0) + 1e-4)).mean()
    assert torch.allclose(vicreg_variance(narrow), expected)


def test_statistics_stay_fp32_under_autocast():
    z_a, z_b = (t.float() for t in pairs(16, 32, seed=1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = barlow_twins_loss(z_a, z_b), vicreg_loss(z_a, z_b)
    for got, want in zip(low, (barlow_twins_loss(z_a, z_b), vicreg_loss(z_a, z_b))):
        assert got.dtype == torch.float32 and torch.allclose(got, want, rtol=1e-6)


# ----------------------------------------------------------------------------- 2 processes == 1


def _distributed_worker(rank: int, world: int, tmp: str, z_a, z_b) -> None:
    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        n = len(z_a) // world
        local = [t[rank * n : (rank + 1) * n].clone().requires_grad_() for t in (z_a, z_b)]
        out = {}
        for name, fn in (("barlow", barlow_twins_loss), ("vicreg", vicreg_loss)):
            for t in local:
                t.grad = None
            loss = fn(*local, gather=True)
            loss.backward()
            # DDP averages parameter gradients over processes: compare each gradient / world.
            out[name] = (loss.detach(), *(t.grad / world for t in local))
        torch.save(out, f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_processes_on_a_split_batch_equal_one_process_on_the_whole(tmp_path):
    z_a, z_b = (t.float() for t in pairs(8, 5, seed=3))
    # fork, not spawn: the children reuse the imported modules (a spawn re-imports for ~10 s).
    mp.start_processes(_distributed_worker, args=(2, str(tmp_path), z_a, z_b), nprocs=2, start_method="fork")
    for name, fn in (("barlow", barlow_twins_loss), ("vicreg", vicreg_loss)):
        full = [z_a.clone().requires_grad_(), z_b.clone().requires_grad_()]
        loss = fn(*full)
        loss.backward()
        for rank in range(2):
            got_loss, grad_a, grad_b = torch.load(tmp_path / f"rank{rank}.pt")[name]
            assert torch.allclose(got_loss, loss.detach(), atol=1e-6), name
            assert torch.allclose(grad_a, full[0].grad[rank * 4 : (rank + 1) * 4], atol=1e-6), name
            assert torch.allclose(grad_b, full[1].grad[rank * 4 : (rank + 1) * 4], atol=1e-6), name
