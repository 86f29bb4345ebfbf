"""Small heads shared by methods."""
from __future__ import annotations

from torch import nn


class ProjectionHead(nn.Sequential):
    """MLP projection head: ``num_layers`` linear layers, BN + ReLU between them.

    SimCLR (Chen et al. 2020, sec. 2.1) uses two layers; the BN follows the paper's released
    configuration. Maps [B, in_dim] -> [B, out_dim].
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
