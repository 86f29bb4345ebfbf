"""Metric-learning losses (selfsup.losses.metric) against slow loops written from the papers: Hadsell, Chopra,
LeCun 2006 eq. 4 (contrastive loss with a margin) and FaceNet (Schroff et al. 2015, arXiv:1503.03832) eq. 1-3
with batch-all / batch-hard (Hermans et al. 2017, arXiv:1703.07737) / semi-hard (FaceNet sec. 3.2) mining;
hand-checked cases; 2 processes (gloo) on a split batch == 1 process on the whole."""
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from selfsup.core.errors import ConfigError
from selfsup.losses import contrastive_margin_loss, triplet_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def dist_fn(distance: str):
    def f(u, v):
        sq = sum((a - b) ** 2 for a, b in zip(u, v))
        return sq if distance == "squared" else math.sqrt(sq)
    return f


def contrastive_reference(emb, labels, m, distance):
    """Hadsell eq. 4 over every ordered pair i != j: (1 - Y) D^2 / 2 + Y max(0, m - D)^2 / 2, Y = 1 if dissimilar."""
    e, D, terms = emb.tolist(), dist_fn(distance), []
    for i in range(len(e)):
        for j in range(len(e)):
            if i != j:
                y = 0 if labels[i] == labels[j] else 1
                terms.append((1 - y) * D(e[i], e[j]) ** 2 / 2 + y * max(0.0, m - D(e[i], e[j])) ** 2 / 2)
    return sum(terms) / len(terms)


def triplet_reference(emb, labels, m, distance, mining):
    """FaceNet eq. 1: [d(a,p) - d(a,n) + m]_+; mining as the papers choose the triplets, one at a time."""
    e, D = emb.tolist(), dist_fn(distance)
    idx = range(len(e))
    terms = []
    for a in idx:
        pos = [p for p in idx if p != a and labels[p] == labels[a]]
        neg = [n for n in idx if labels[n] != labels[a]]
        if mining == "all":  # every triplet
            terms += [max(0.0, D(e[a], e[p]) - D(e[a], e[n]) + m) for p in pos for n in neg]
        elif mining == "hard":  # hardest positive, hardest negative of each anchor
            if pos and neg:
                terms.append(max(0.0, max(D(e[a], e[p]) for p in pos) - min(D(e[a], e[n]) for n in neg) + m))
        else:  # every (a, p); the nearest negative with d(a,p) < d(a,n); none: 0
            for p in pos:
                semi = [D(e[a], e[n]) for n in neg if D(e[a], e[n]) > D(e[a], e[p])]
                terms.append(max(0.0, D(e[a], e[p]) - min(semi) + m) if semi else 0.0)
    return sum(terms) / len(terms) if terms else 0.0


def batch(m, d, classes, seed, normalise=False):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(m, d, generator=g, dtype=torch.float64)
    return (torch.nn.functional.normalize(emb, dim=1) if normalise else emb), torch.randint(0, classes, (m,), generator=g)


CASES = [(10, 3, 3, 0.2, 1), (16, 5, 4, 1.0, 2), (12, 4, 2, 0.5, 3), (9, 2, 5, 2.0, 4)]


@pytest.mark.parametrize("distance", ["euclidean", "squared"])
@pytest.mark.parametrize("m, d, classes, margin, seed", CASES)
def test_contrastive_margin_loss_matches_hadsell_eq_4(m, d, classes, margin, seed, distance):
    emb, labels = batch(m, d, classes, seed)
    want = contrastive_reference(emb, labels.tolist(), margin, distance)
    got = contrastive_margin_loss(emb, labels, margin, distance)
    assert got.item() == pytest.approx(want, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("mining", ["all", "hard", "semihard"])
@pytest.mark.parametrize("distance", ["euclidean", "squared"])
@pytest.mark.parametrize("m, d, classes, margin, seed", CASES)
def test_triplet_loss_matches_the_papers_mining(m, d, classes, margin, seed, distance, mining):
    for normalise in (False, True):  # FaceNet's unit embeddings, and raw ones (larger distances)
        emb, labels = batch(m, d, classes, seed, normalise)
        want = triplet_reference(emb, labels.tolist(), margin, distance, mining)
        got = triplet_loss(emb, labels, margin, distance, mining)
        assert got.item() == pytest.approx(want, rel=1e-9, abs=1e-12), normalise


def test_hand_checked_triplets():
    # on a line: anchor 0 at 0, positive at 1, negatives at 1.5 and 3 (labels 0, 0, 1, 1); margin 1, euclidean
    emb = torch.tensor([[0.0], [1.0], [1.5], [3.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    # anchor 0: (p=1) n=1.5: 1 - 1.5 + 1 = 0.5; n=3: 0.  anchor 1 (p=0 at 1): n at 0.5: 1.5; n at 2: 0.
    # anchor 2 (p=3 at 1.5): n=0 at 1.5: 1; n=1 at 0.5: 2.  anchor 3 (p at 1.5): n at 3: 0; n at 2: 0.5
    assert triplet_loss(emb, labels, 1.0, "euclidean", "all").item() == pytest.approx((0.5 + 1.5 + 1 + 2 + 0.5) / 8)
    # hard: a0: 1 - 1.5 + 1 = 0.5; a1: 1 - 0.5 + 1 = 1.5; a2: 1.5 - 0.5 + 1 = 2; a3: 1.5 - 2 + 1 = 0.5
    assert triplet_loss(emb, labels, 1.0, "euclidean", "hard").item() == pytest.approx((0.5 + 1.5 + 2 + 0.5) / 4)
    # semi-hard: a0 (d_ap 1): n at 1.5 -> 0.5; a1 (1): negatives at 0.5, 2 -> n at 2: 0; a2 (1.5): at 1.5 (not >), 0.5:
    # none -> 0; a3 (1.5): at 2 -> 0.5
    assert triplet_loss(emb, labels, 1.0, "euclidean", "semihard").item() == pytest.approx((0.5 + 0 + 0 + 0.5) / 4)
    # Hadsell: pairs (0,1) D=1 similar 0.5; (2,3) D=1.5: 1.125; dissimilar with m=2: D=1.5: 0.125, D=3: 0,
    # D=0.5: 1.125, D=2: 0 -> each unordered pair twice
    got = contrastive_margin_loss(emb, labels, 2.0, "euclidean").item()
    assert got == pytest.approx((0.5 + 1.125 + 0.125 + 0 + 1.125 + 0) / 6)


@pytest.mark.parametrize("mining", ["all", "hard", "semihard"])
def test_triplet_gradients(mining):
    emb, labels = batch(8, 3, 3, seed=6)
    x = emb.clone().requires_grad_()
    for distance in ("euclidean", "squared"):
        assert torch.autograd.gradcheck(lambda e: triplet_loss(e, labels, 0.5, distance, mining), (x,))
    assert torch.autograd.gradcheck(lambda e: contrastive_margin_loss(e, labels, 1.5), (x,))
    # two identical embeddings (a distance of exactly 0, as a row's to itself): finite gradients
    same = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]], requires_grad=True)
    loss = triplet_loss(same, torch.tensor([0, 0, 1, 1]), 5.0, "euclidean", mining)  # a margin every triplet violates
    loss.backward()
    contrastive_margin_loss(same, torch.tensor([0, 0, 1, 1])).backward()
    assert loss > 0 and torch.isfinite(same.grad).all()


def test_no_triplet_and_bad_arguments():
    emb = torch.randn(4, 3)
    assert triplet_loss(emb, torch.zeros(4, dtype=torch.long), mining="all").item() == 0.0  # no negative
    assert triplet_loss(emb, torch.arange(4), mining="semihard").item() == 0.0  # no positive
    with pytest.raises(ConfigError, match="triplet_loss: mining must be one of all, hard, semihard, got 'easy'"):
        triplet_loss(emb, torch.arange(4), mining="easy")
    with pytest.raises(ConfigError, match="distance must be one of euclidean, squared, got 'cosine'"):
        contrastive_margin_loss(emb, torch.arange(4), distance="cosine")
    with pytest.raises(ConfigError, match="triplet_loss: margin must be a finite number > 0, got -1"):
        triplet_loss(emb, torch.arange(4), margin=-1)


# ----------------------------------------------------------------------------- 2 processes == 1

LOSSES = {
    "contrastive": lambda e, y, **kw: contrastive_margin_loss(e, y, 1.0, "euclidean", **kw),
    **{mining: (lambda e, y, mining=mining, **kw: triplet_loss(e, y, 0.5, "squared", mining, **kw))
       for mining in ("all", "hard", "semihard")},
}


def global_batch():
    g = torch.Generator().manual_seed(7)
    emb = torch.nn.functional.normalize(torch.randn(12, 4, generator=g), dim=1)
    # rank 0 rows 0-5, rank 1 rows 6-11: label 9 has no positive; positives cross the ranks; uneven counts
    return emb, torch.tensor([9, 0, 1, 1, 2, 0, 0, 2, 2, 1, 3, 3])


def _worker(rank: int, world: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        emb, labels = global_batch()
        part = slice(rank * 6, (rank + 1) * 6)
        out = {}
        for name, fn in LOSSES.items():
            mine = emb[part].clone().requires_grad_()
            loss = fn(mine, labels[part], gather=True)
            loss.backward()
            out[name] = (loss.detach(), mine.grad)
        torch.save(out, f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_processes_on_a_split_batch_equal_one_process_on_the_whole(tmp_path):
    mp.start_processes(_worker, args=(2, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name, fn in LOSSES.items():
        emb, labels = global_batch()
        emb.requires_grad_()
        loss = fn(emb, labels)
        loss.backward()
        (loss0, g0), (loss1, g1) = ranks[0][name], ranks[1][name]
        assert loss > 0, name
        torch.testing.assert_close((loss0 + loss1) / 2, loss.detach(), rtol=1e-5, atol=1e-6, msg=name)
        # each rank's gradient is that of its own loss; DDP averages them over the 2 ranks
        torch.testing.assert_close(torch.cat([g0, g1]) / 2, emb.grad, rtol=1e-4, atol=1e-6, msg=name)
