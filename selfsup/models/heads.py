"""Small heads shared by methods."""
from __future__ import annotations

from torch import nn


class ProjectionHead(nn.Sequential):
    """MLP projection head: ``num_layers`` linear layers, BN + ReLU between them.

    SimCLR (Chen et al. 2020, sec. 2.1) uses two layers; the BN follows the paper's released
    configuration. ``last_bn``: a BN without affine parameters on the output too (SimCLR's released
    code and SimCLR v2, arXiv:2006.10029; MoCo v3's projector, arXiv:2104.02057); on 2-epoch CIFAR-10
    it lifted SimCLR's kNN accuracy by 3 points (eval/results/quality-vs-lightly-cpu-2026-11-22.md).
    Maps [B, in_dim] -> [B, out_dim].
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, last_bn: bool = False):
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim, bias=not last_bn))
        if last_bn:
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
        super().__init__(*layers)
