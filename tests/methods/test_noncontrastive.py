"""BYOL, SimSiam, Barlow Twins, VICReg: losses against slow loops written from the papers'
equations, stop-gradients, BYOL's EMA target, views, and 2 processes == 1 process."""
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from selfsup.data.augment import ViewMaker
from selfsup.losses.noncontrastive import (
    barlow_twins_loss,
    byol_loss,
    simsiam_loss,
    vicreg_loss,
    vicreg_terms,
    vicreg_variance,
)
from selfsup.methods import create_method
from selfsup.models.backbones import create_backbone

SIZE = 16
SMALL_HEADS = {
    "byol": dict(proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=32),
    "simsiam": dict(proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=8),
    "barlowtwins": dict(proj_hidden_dim=32, proj_dim=16),
    "vicreg": dict(proj_hidden_dim=32, proj_dim=16),
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pairs(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    z_a = torch.randn(n, d, generator=gen, dtype=torch.float64) * 2 + 0.5
    return z_a, z_a + torch.randn(n, d, generator=gen, dtype=torch.float64)


# --------------------------------------------------------------------------- slow references


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


# --------------------------------------------------------------------------- losses


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


# --------------------------------------------------------------------------- 2 processes == 1


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


# --------------------------------------------------------------------------- methods


def build(name: str, **overrides):
    torch.manual_seed(0)
    backbone = create_backbone("test_resnet", small_stem=True, in_chans=1)
    return create_method(name, backbone, image_size=SIZE, **{**SMALL_HEADS[name], **overrides})


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


@pytest.mark.parametrize("name", ["byol", "simsiam"])
def test_no_gradient_flows_through_the_target_branch(name):
    method = build(name).train()
    method.predictor = ConstantPredictor(16)
    method(make_views(method), torch.zeros(8), {})["loss"].backward()
    assert method.predictor.out.grad.abs().sum() > 0
    for param_name, p in method.named_parameters():
        if not param_name.startswith("predictor"):
            assert p.grad is None or p.grad.abs().sum() == 0, param_name


def test_byol_target_is_an_exact_moving_average_and_gets_no_gradient():
    method = build("byol", momentum_base=0.8).train()
    online = [*method.backbone.parameters(), *method.projector.parameters()]
    target = [*method.target_backbone.parameters(), *method.target_projector.parameters()]
    assert all(torch.equal(t, o) and not t.requires_grad for t, o in zip(target, online))
    expected = [p.detach().clone() for p in online]
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    taus = method.schedules(total_steps=4, steps_per_epoch=2)["ema_momentum"]
    assert taus[0] == 0.8 and all(taus[1:] > taus[:-1]) and taus[-1] < 1
    for step in range(4):
        values = {"lr": 0.5, "ema_momentum": float(taus[step])}
        method(make_views(method, seed=step), torch.zeros(8), values)["loss"].backward()
        assert all(t.grad is None for t in target)
        optimizer.step()
        optimizer.zero_grad()
        method.on_step_end(values)
        expected = [taus[step] * e + (1 - taus[step]) * o.detach() for e, o in zip(expected, online)]
        for t, e in zip(target, expected):
            assert torch.allclose(t, e, rtol=0, atol=1e-6)
    assert any(not torch.allclose(t, o) for t, o in zip(target, online)), "the target should lag the online network"
    for t_buf, o_buf in zip(method.target_backbone.buffers(), method.backbone.buffers()):
        assert torch.equal(t_buf, o_buf)  # BN statistics are copied


def test_views():
    byol_64 = create_method("byol", create_backbone("test_resnet", small_stem=True), image_size=64)
    (first, n1), (second, n2) = byol_64.views
    assert n1 == n2 == 1 and (first.blur_p, second.blur_p) == (1.0, 0.1)
    assert (first.solarize_p, second.solarize_p) == (0.0, 0.2)
    assert first.saturation == 0.2 and first.brightness == 0.4
    for name in ("barlowtwins", "vicreg"):  # BYOL's augmentations; no blur at 16 px
        (first, _), (second, _) = build(name).views
        assert (first.solarize_p, second.solarize_p, first.blur_p, second.blur_p) == (0.0, 0.2, 0.0, 0.0)
    ((spec, count),) = build("simsiam").views
    assert count == 2 and tuple(spec.crop_scale) == (0.2, 1.0) and spec.saturation == 0.4


@pytest.mark.parametrize("name", ["barlowtwins", "vicreg"])
def test_method_loss_is_the_loss_of_its_projections(name):
    method = build(name).train()
    views = make_views(method)
    loss = method(views, torch.zeros(8), {})["loss"]
    z_a, z_b = method.projector(method.backbone(torch.cat(views))).chunk(2)
    want = barlow_twins_loss(z_a, z_b) if name == "barlowtwins" else vicreg_loss(z_a, z_b)
    assert torch.allclose(loss, want, rtol=1e-5)
