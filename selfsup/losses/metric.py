"""Metric-learning losses on embeddings: the margin contrastive loss of Hadsell et al. and the triplet
loss of FaceNet, with batch-all / batch-hard / semi-hard mining over the (global) batch.

Hadsell, Chopra, LeCun, "Dimensionality Reduction by Learning an Invariant Mapping", CVPR 2006, eq. 4.
Schroff, Kalenichenko, Philbin, "FaceNet: A Unified Embedding for Face Recognition and Clustering",
CVPR 2015 (arXiv:1503.03832), eqs. 1-3 and sec. 3.2 (triplet selection). Batch-all and batch-hard as
named by Hermans, Beyer, Leibe, "In Defense of the Triplet Loss for Person Re-Identification", 2017
(arXiv:1703.07737), sec. 2.

Pairs and triplets are formed between this process's rows (anchors) and every row of the batch
(candidates, gathered from every process with ``gather=True``); a row is never its own positive. Each
loss is a mean over the global batch's terms: with ``gather=True`` a process divides its own sum by
(the global count / processes), so the mean of the processes' losses is the single-process loss.
"""
from __future__ import annotations

import torch

from selfsup.core.distributed import all_reduce_mean, gather_no_grad, gather_with_grad, rank
from selfsup.core.errors import ConfigError
from selfsup.losses.arguments import check_scalar

__all__ = ["contrastive_margin_loss", "triplet_loss"]

DISTANCES = ("euclidean", "squared")
MININGS = ("all", "hard", "semihard")


def _check(loss: str, emb: torch.Tensor, labels: torch.Tensor, margin: float, distance: str) -> None:
    check_scalar(loss, "margin", margin)
    if distance not in DISTANCES:
        raise ConfigError(f"{loss}: distance must be one of {', '.join(DISTANCES)}, got {distance!r}")
    if emb.dim() != 2 or labels.shape != emb.shape[:1]:
        raise ValueError(f"{loss}: emb must be [M, D] and labels [M], got {list(emb.shape)} and {list(labels.shape)}")


def pair_distances(emb: torch.Tensor, labels: torch.Tensor, distance: str, gather: bool):
    """Distances of this process's rows to every row, and which pairs are positive / negative.

    Args:
        emb: [M, D] embeddings. labels: int [M]. distance: ``euclidean`` ||a - b|| or ``squared`` ||a - b||^2.
        gather: candidates from every process (autograd-correct all-gather).
    Returns:
        d [M, M_total] (fp32 or wider), positive [M, M_total] (same label, not the row itself),
        negative [M, M_total] (another label).
    """
    cand = gather_with_grad(emb) if gather else emb
    cand_labels = gather_no_grad(labels) if gather else labels
    wide = torch.promote_types(emb.dtype, torch.float32)
    a, c = emb.to(wide), cand.to(wide)
    squared = (a.pow(2).sum(1, keepdim=True) + c.pow(2).sum(1)[None, :] - 2 * a @ c.T).clamp_min(0)
    # sqrt's gradient at 0 (a row against itself, identical embeddings) is infinite: clamp, with zero gradient
    d = squared if distance == "squared" else squared.clamp_min(1e-12).sqrt()
    rows = torch.arange(emb.shape[0], device=emb.device)
    is_self = torch.zeros_like(d, dtype=torch.bool)
    is_self[rows, rows + (rank() * emb.shape[0] if gather else 0)] = True
    same = labels[:, None] == cand_labels[None, :]
    return d, same & ~is_self, ~same


def _global_mean(total: torch.Tensor, count: torch.Tensor, gather: bool) -> torch.Tensor:
    """``total`` / the global ``count`` (per process when gathered): 0 when there is nothing to average."""
    count = count.to(total.dtype)
    if gather:
        count = all_reduce_mean(count)
    return total / count.clamp_min(1)


def contrastive_margin_loss(emb: torch.Tensor, labels: torch.Tensor, margin: float = 1.0,
                            distance: str = "euclidean", *, gather: bool = False) -> torch.Tensor:
    """Contrastive loss with a margin (Hadsell, Chopra, LeCun 2006, eq. 4), mean over pairs.

    For every ordered pair (i, j), i != j, of the batch with distance D = D(emb_i, emb_j): a similar pair
    (same label, Y = 0) pays ``D^2 / 2``, a dissimilar one (Y = 1) pays ``max(0, margin - D)^2 / 2``.
    The loss is the mean over all ordered pairs (each unordered pair counted twice, so this equals the mean
    over unordered pairs; the paper sums over pairs). The paper's D is Euclidean; ``squared`` uses
    D = ||a - b||^2 instead (then the similar term is ||a - b||^4 / 2).

    Args:
        emb: [M, D] embeddings (normalise them first where the method wants unit vectors).
        labels: int [M]; rows with equal labels are similar pairs (two views of one image share a label).
        margin: m > 0: dissimilar pairs farther apart than m cost nothing.
        distance: ``euclidean`` (the paper) or ``squared``.
        gather: pairs of this process's rows with every process's rows (see the module docstring).
    Returns:
        scalar loss.
    Raises:
        ConfigError: ``margin`` is not a finite number > 0, or ``distance`` is unknown.
    """
    _check("contrastive_margin_loss", emb, labels, margin, distance)
    d, positive, negative = pair_distances(emb, labels, distance, gather)
    terms = torch.where(positive, d.pow(2), (margin - d).clamp_min(0).pow(2)) / 2
    pairs = positive | negative  # every pair but a row with itself
    return _global_mean(terms.masked_fill(~pairs, 0.0).sum(), pairs.sum(), gather)


def triplet_loss(emb: torch.Tensor, labels: torch.Tensor, margin: float = 0.2, distance: str = "squared",
                 mining: str = "semihard", *, gather: bool = False) -> torch.Tensor:
    """Triplet loss (FaceNet, Schroff et al. 2015, arXiv:1503.03832, eq. 1-3): ``[d(a,p) - d(a,n) + margin]_+``.

    FaceNet uses squared Euclidean distances of L2-normalised embeddings and margin (alpha) 0.2. Triplets
    come from the batch (online mining); positives share the anchor's label, negatives do not.

    - ``all`` (batch-all; FaceNet eq. 3 over every triplet, Hermans et al. 2017): the mean over every
      valid triplet (a, p, n) of the batch (summed with sorted negatives: memory M x M_total, not M x M_total^2).
    - ``hard`` (batch-hard; Hermans et al. 2017 eq. 4, FaceNet's argmax / argmin of sec. 3.2 within the
      batch): per anchor, its farthest positive and nearest negative; the mean over anchors with both.
    - ``semihard`` (FaceNet sec. 3.2): every anchor-positive pair (a, p) takes the nearest semi-hard
      negative, ``d(a,p) < d(a,n)``, so the loss is positive only when it lies inside the margin; a pair
      without one (all negatives nearer than p) contributes 0. The mean over all anchor-positive pairs.

    Args:
        emb: [M, D] embeddings (FaceNet: L2-normalised). labels: int [M]; a view repeats its image's label.
        margin: alpha > 0. distance: ``squared`` ||a - b||^2 (FaceNet) or ``euclidean`` ||a - b||.
        mining: ``all``, ``hard`` or ``semihard``.
        gather: anchors are this process's rows, positives and negatives come from every process.
    Returns:
        scalar loss; 0 when the batch holds no triplet.
    Raises:
        ConfigError: a bad ``margin``, ``distance`` or ``mining``.
    """
    _check("triplet_loss", emb, labels, margin, distance)
    if mining not in MININGS:
        raise ConfigError(f"triplet_loss: mining must be one of {', '.join(MININGS)}, got {mining!r}")
    d, positive, negative = pair_distances(emb, labels, distance, gather)
    if mining == "hard":
        hardest_pos = d.masked_fill(~positive, float("-inf")).amax(dim=1)
        hardest_neg = d.masked_fill(~negative, float("inf")).amin(dim=1)
        valid = positive.any(dim=1) & negative.any(dim=1)
        terms = (hardest_pos - hardest_neg + margin).clamp_min(0)
        return _global_mean(terms.masked_fill(~valid, 0.0).sum(), valid.sum(), gather)
    # Every anchor's negative distances, sorted: s [M, T] ascending, +inf past its K_a negatives. Both modes
    # then need M x T memory, not the M x T x T of an explicit triplet tensor.
    order = d.detach().masked_fill(~negative, float("inf")).argsort(dim=1)
    s = d.gather(1, order).masked_fill(~negative.gather(1, order), float("inf"))
    if mining == "all":
        # sum_n [d_ap - s_n + margin]_+ = k (d_ap + margin) - (s_1 + ... + s_k), k = #{n : s_n < d_ap + margin}
        k = torch.searchsorted(s.detach(), (d + margin).detach().contiguous())
        prefix = torch.cat([s.new_zeros(len(s), 1), s.masked_fill(s.isinf(), 0.0).cumsum(dim=1)], dim=1)
        terms = k * (d + margin) - prefix.gather(1, k)
        triplets = (positive.sum(dim=1) * negative.sum(dim=1)).sum()
        return _global_mean(terms.masked_fill(~positive, 0.0).sum(), triplets, gather)
    # semi-hard: for each (a, p) the nearest negative strictly farther than p: index k = #{n : s_n <= d_ap}
    k = torch.searchsorted(s.detach(), d.detach().contiguous(), right=True)
    valid = positive & (k < negative.sum(dim=1, keepdim=True))
    nearest = torch.where(valid, s.gather(1, k.clamp_max(s.shape[1] - 1)), torch.zeros_like(d))
    terms = (d - nearest + margin).clamp_min(0).masked_fill(~valid, 0.0)
    return _global_mean(terms.sum(), positive.sum(), gather)
