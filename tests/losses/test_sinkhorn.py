"""Sinkhorn-Knopp codes (selfsup.losses.sinkhorn) against loops written from SwAV's eq. 3-4 and Algorithm 1
(Caron et al. 2020, arXiv:2006.09882), and 2 processes (gloo) against one process on the global batch."""
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from selfsup.core.errors import ConfigError
from selfsup.losses import sinkhorn_knopp


def sinkhorn_reference(scores: torch.Tensor, epsilon: float, iterations: int) -> list[list[float]]:
    """The paper's Q (K x B): Q = exp(C^T Z / eps) / total; then, ``iterations`` times, each prototype
    row scaled to mass 1/K and each sample column to mass 1/B; finally B * Q^T (rows of the answer sum to 1)."""
    b, k = scores.shape
    q = [[math.exp(float(scores[j, i]) / epsilon) for j in range(b)] for i in range(k)]
    total = sum(sum(row) for row in q)
    q = [[x / total for x in row] for row in q]
    for _ in range(iterations):
        for i in range(k):
            mass = sum(q[i])
            q[i] = [x / mass / k for x in q[i]]
        for j in range(b):
            mass = sum(q[i][j] for i in range(k))
            for i in range(k):
                q[i][j] = q[i][j] / mass / b
    return [[b * q[i][j] for i in range(k)] for j in range(b)]


def cosine_scores(b: int, k: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(b, 6, generator=gen, dtype=dtype), dim=1)
    c = torch.nn.functional.normalize(torch.randn(k, 6, generator=gen, dtype=dtype), dim=1)
    return z @ c.T


@pytest.mark.parametrize("b,k,epsilon,iterations", [(5, 3, 0.05, 3), (4, 7, 0.1, 1), (9, 4, 0.5, 5), (1, 2, 0.05, 3)])
def test_codes_match_the_papers_iterations(b, k, epsilon, iterations):
    scores = cosine_scores(b, k, seed=b * k)
    got = sinkhorn_knopp(scores, epsilon, iterations)
    want = torch.tensor(sinkhorn_reference(scores, epsilon, iterations), dtype=torch.float64)
    assert got.shape == (b, k) and got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_rows_sum_to_one_and_columns_become_uniform():
    scores = cosine_scores(12, 4, seed=3)
    few = sinkhorn_knopp(scores, 0.05, 3)
    torch.testing.assert_close(few.sum(1), torch.ones(12, dtype=torch.float64))
    many = sinkhorn_knopp(scores, 0.05, 300)
    torch.testing.assert_close(many.sum(1), torch.ones(12, dtype=torch.float64))
    torch.testing.assert_close(many.sum(0), torch.full((4,), 12 / 4, dtype=torch.float64), rtol=1e-6, atol=0)
    assert (few.sum(0) - 3).abs().max() > (many.sum(0) - 3).abs().max()  # the iterations do the equipartition


def test_hand_checked_two_by_two():
    # exp(S / eps) = [[e, 1], [1, e]] is already balanced: the codes are its rows, normalised.
    codes = sinkhorn_knopp(torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64), epsilon=1.0, iterations=3)
    e = math.e
    torch.testing.assert_close(codes, torch.tensor([[e, 1], [1, e]], dtype=torch.float64) / (1 + e))
    # equal scores: every sample spread evenly over the prototypes
    torch.testing.assert_close(sinkhorn_knopp(torch.zeros(3, 5)), torch.full((3, 5), 0.2))


def test_shifts_the_scalings_absorb_change_nothing_and_large_scores_stay_finite():
    """Every iterate is Diag(u) exp(S / eps) Diag(v): a constant per prototype (and so a global one, as the
    code's shift by each prototype's maximum) is absorbed by the first prototype normalisation, exactly; a
    constant per sample only in the limit. Scores of 1000 at eps 0.05 would overflow a naive exp, and
    prototypes 100 apart would leave the lower ones no mass after a single global shift (0 / 0)."""
    scores = cosine_scores(6, 5, seed=4)
    per_prototype = scores + 7.0 + torch.randn(1, 5, dtype=torch.float64) * 3
    torch.testing.assert_close(sinkhorn_knopp(per_prototype, 0.05, 3), sinkhorn_knopp(scores, 0.05, 3),
                               rtol=1e-9, atol=1e-12)
    per_sample = scores + torch.randn(6, 1, dtype=torch.float64) * 0.1
    torch.testing.assert_close(sinkhorn_knopp(per_sample, 0.05, 2000), sinkhorn_knopp(scores, 0.05, 2000),
                               rtol=1e-6, atol=1e-9)
    offsets = torch.tensor([[0.0, 100.0, -100.0, 50.0, 0.0]], dtype=torch.float64)
    big = (scores + 1000 + offsets).float()  # fp32 holds these to ~6e-5, i.e. 1e-3 of a code: compare in kind
    exact = sinkhorn_knopp(big.double() - 1000 - offsets, 0.05, 3)
    torch.testing.assert_close(sinkhorn_knopp(big, 0.05, 3), exact.float(), rtol=1e-5, atol=1e-7)


def test_codes_are_targets_in_fp32_without_gradient():
    scores = cosine_scores(4, 3, seed=5, dtype=torch.float32).requires_grad_()
    codes = sinkhorn_knopp(scores)
    assert not codes.requires_grad
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = sinkhorn_knopp(scores.bfloat16())
    assert low.dtype == torch.float32


def test_bad_arguments_are_one_line_errors():
    scores = torch.randn(4, 3)
    for bad in (0, -0.1, float("nan")):
        with pytest.raises(ConfigError, match=r"^sinkhorn_knopp: epsilon must be a finite number > 0"):
            sinkhorn_knopp(scores, epsilon=bad)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match=r"^sinkhorn_knopp: iterations must be an integer >= 1"):
            sinkhorn_knopp(scores, iterations=bad)
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        sinkhorn_knopp(torch.randn(2, 3, 4))


# ----------------------------------------------------------------------------- 2 processes == 1

SPLIT = (5, 7)  # unequal shares: B is the sum of the ranks' rows, not rows x world


def _worker(rank: int, world: int, tmp: str, scores: torch.Tensor) -> None:
    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world)
    try:
        start = sum(SPLIT[:rank])
        mine = scores[start : start + SPLIT[rank]]
        out = {"gathered": sinkhorn_knopp(mine, 0.05, 3, gather=True), "local": sinkhorn_knopp(mine, 0.05, 3)}
        torch.save(out, f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_processes_equal_one_process_on_the_global_batch(tmp_path):
    scores = cosine_scores(sum(SPLIT), 4, seed=6)
    scores[:5] += 0.5  # rank 0's scores higher: each rank's own maxima would shift differently
    # fork: the children inherit the imported modules (spawn would re-import torch, ~10 s)
    mp.start_processes(_worker, args=(2, str(tmp_path), scores), nprocs=2, join=True, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    whole = sinkhorn_knopp(scores, 0.05, 3)
    torch.testing.assert_close(torch.cat([r["gathered"] for r in ranks]), whole, rtol=1e-12, atol=1e-15)
    # without the gather each rank equipartitions its own share only: not the global batch's codes
    assert not torch.allclose(torch.cat([r["local"] for r in ranks]), whole, atol=1e-3)
