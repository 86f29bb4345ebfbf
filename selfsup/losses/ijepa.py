"""I-JEPA's loss: predict the target encoder's patch representations of masked blocks.

Assran, Duval, Misra, Bojanowski, Vincent, Rabbat, LeCun, Ballas, "Self-Supervised Learning from Images
with a Joint-Embedding Predictive Architecture", CVPR 2023 (arXiv:2301.08243), sec. 3, eq. 1:

    L = 1/M sum_{i=1..M} D(s_hat_y(i), s_y(i)),   D = average L2 distance over the patches of block i

between the predictor's outputs ``s_hat_y(i)`` for target block ``i`` and the target encoder's
representations ``s_y(i)`` of the same patches (layer-normed, without gradient). The squared L2 distance
is averaged over patches and feature dimensions (the paper's code averages over every element), per
block, then over images and the M blocks, so the scale does not depend on block size or width.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ijepa_loss"]


def ijepa_loss(predictions: list[Tensor], targets: list[Tensor], normalize_targets: bool = True) -> Tensor:
    """I-JEPA's L2 loss between predicted and target patch representations (Assran et al. 2023, eq. 1).

    Args:
        predictions: M tensors ``[B, n_i, D]``: the predictor's outputs at the ``n_i`` patches of target
            block ``i`` of each image (block sizes may differ between blocks).
        targets: M tensors ``[B, n_i, D]``: the target encoder's outputs at the same patches, in the same
            order. Detached here.
        normalize_targets: layer-norm each target vector over ``D`` first (no affine), as the paper.

    Returns:
        Scalar: ``1/M sum_i mean_{b, j, d} (pred_i[b, j, d] - target_i[b, j, d])^2``, in fp32 (fp64 for fp64).

    Example::

        loss = ijepa_loss([pred_1, pred_2, pred_3, pred_4], [h[b, idx_1], ..., h[b, idx_4]])
    """
    if len(predictions) != len(targets) or not predictions:
        raise ValueError(f"ijepa_loss: got {len(predictions)} prediction and {len(targets)} target blocks; "
                         "one of each per block, at least one")
    total = None
    for pred, target in zip(predictions, targets):
        if pred.shape != target.shape:
            raise ValueError(f"ijepa_loss: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        pred = pred.to(torch.promote_types(pred.dtype, torch.float32))
        target = target.detach().to(pred.dtype)
        if normalize_targets:
            target = F.layer_norm(target, target.shape[-1:])
        block = (pred - target).square().mean()
        total = block if total is None else total + block
    return total / len(predictions)
