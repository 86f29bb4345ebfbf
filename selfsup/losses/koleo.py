"""The KoLeo regulariser: spread features by pushing each away from its nearest neighbour.

Sablayrolles, Douze, Schmid, Jégou, "Spreading vectors for similarity search", ICLR 2019
(arXiv:1806.03198), sec. 3.3: the Kozachenko-Leonenko differential-entropy estimator gives

    L_koleo = -1/n sum_i log(d_{n,i}),   d_{n,i} = min_{j != i} ||x_i - x_j||

over a batch of n L2-normalised vectors. DINOv2 (Oquab et al. 2023, arXiv:2304.07193, sec. 4) adds it,
weighted 0.1, on the student's [CLS] features of each global crop, within each process's batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.losses.arguments import check_scalar

__all__ = ["koleo_loss"]


def koleo_loss(features: Tensor, eps: float = 1e-8) -> Tensor:
    """KoLeo: ``-mean_i log(min_{j != i} ||x_i - x_j|| + eps)`` of the L2-normalised rows ``x_i`` (DINOv2, sec. 4).

    The nearest neighbour is found without gradient (for unit vectors the closest one has the largest dot
    product); the distance to it is differentiated. Rows are normalised with ``F.normalize(eps=1e-8)``.

    Args:
        features: ``[n, D]`` with ``n >= 2`` (DINOv2: the student's [CLS] features of one global crop).
        eps: added to each distance before the log, so duplicated rows give a large finite loss.

    Returns:
        Scalar (fp32, or fp64 for fp64 input).
    Raises:
        ConfigError: ``eps`` is not a finite number > 0.
        ValueError: ``features`` is not ``[n, D]`` with ``n >= 2``.

    Example::

        loss = loss + 0.1 * sum(koleo_loss(c) for c in student_cls.chunk(2))
    """
    check_scalar("koleo_loss", "eps", eps)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"koleo_loss: features must be [n, D] with n >= 2, got shape {tuple(features.shape)}")
    x = F.normalize(features.to(torch.promote_types(features.dtype, torch.float32)), dim=-1, eps=1e-8)
    with torch.no_grad():
        dots = x @ x.T  # [n, n]
        dots.fill_diagonal_(-float("inf"))  # never one's own neighbour
        nearest = dots.argmax(dim=1)  # [n]
    distance = (x - x[nearest]).norm(dim=-1)  # [n]
    return -torch.log(distance + eps).mean()
