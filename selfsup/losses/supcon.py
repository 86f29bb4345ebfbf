"""The supervised contrastive loss L^sup_out of SupCon.

Khosla, Teterwak, Wang, Sarna, Tian, Isola, Maschinot, Liu, Krishnan, "Supervised Contrastive
Learning", NeurIPS 2020 (arXiv:2004.11362), eq. 2.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.core.distributed import all_reduce_mean, gather_no_grad, gather_with_grad, rank
from selfsup.losses.arguments import check_scalar

__all__ = ["supcon_loss"]


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1, *, gather: bool = False) -> torch.Tensor:
    """Supervised contrastive loss L^sup_out (Khosla et al. 2020, arXiv:2004.11362, eq. 2).

    Over the multiviewed batch I (every view of every image, rows of ``z``), with ``z`` L2-normalised,
    A(i) = I minus i, and P(i) = the rows of A(i) with the label of i (its other views and every other
    sample of its class):

        L_i = -1 / |P(i)| * sum_{p in P(i)} log( exp(z_i . z_p / t) / sum_{a in A(i)} exp(z_i . z_a / t) )

    and the loss is the mean of L_i over the anchors (eq. 2 sums them; the mean keeps the house's
    mean-over-samples convention). The paper's batches always give every anchor a positive (its other
    view); an anchor without one (a lone view of its class) has no L_i (1 / |P(i)| is undefined) and is
    left out of the mean; if no anchor has a positive the loss is 0 (with a zero gradient).

    With every image's label distinct, P(i) is the other view alone and this is SimCLR's NT-Xent
    (:func:`~selfsup.losses.nt_xent` on ``z = [z_a; z_b]``). There is no ``base_temperature``: eq. 2 has
    none; the authors' released code multiplies the loss by ``t / base_temperature`` (0.07 by default),
    a constant factor that only rescales the gradient (a learning-rate change), so it is left out.

    Args:
        z: [M, D] projections (not yet normalised): all views of the batch stacked, in any order.
        labels: int [M], the class of each row (a view repeats its image's label); any integers.
        temperature: t > 0 (0.1 in the paper).
        gather: anchors are this process's rows; positives and the denominator's samples come from every
            process (autograd-correct all-gather), and the mean is over the global batch's anchors, so the
            mean of the processes' losses is the single-process loss on the global batch.
    Returns:
        scalar loss (fp32 under autocast).
    Raises:
        ConfigError: ``temperature`` is not a finite number > 0.
    """
    check_scalar("supcon_loss", "temperature", temperature)
    if z.dim() != 2 or labels.shape != z.shape[:1]:
        raise ValueError(f"supcon_loss: z must be [M, D] and labels [M], got {list(z.shape)} and {list(labels.shape)}")
    z = F.normalize(z, dim=1)
    candidates = gather_with_grad(z) if gather else z
    cand_labels = gather_no_grad(labels) if gather else labels
    logits = z @ candidates.T  # [M, M_total]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    rows = torch.arange(z.shape[0], device=z.device)
    own = rows + (rank() * z.shape[0] if gather else 0)  # each anchor's own column
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[rows, own] = True
    log_prob = logits - logits.masked_fill(is_self, float("-inf")).logsumexp(dim=1, keepdim=True)
    positive = (labels[:, None] == cand_labels[None, :]) & ~is_self  # P(i)
    count = positive.sum(dim=1)  # |P(i)|
    per_anchor = -log_prob.masked_fill(~positive, 0.0).sum(dim=1) / count.clamp_min(1)
    has_positive = (count > 0).to(per_anchor.dtype)
    anchors = has_positive.sum()
    if gather:  # the global number of anchors with a positive, per process: mean over ranks = global mean
        anchors = all_reduce_mean(anchors)
    return (per_anchor * has_positive).sum() / anchors.clamp_min(1)
