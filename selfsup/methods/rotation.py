"""RotNet: predicting image rotations.

Gidaris, Singh, Komodakis, "Unsupervised Representation Learning by Predicting Image Rotations",
ICLR 2018 (arXiv:1803.07728). Every image of the batch is fed at the four rotations
0, 90, 180 and 270 degrees *in the same batch* (the paper's choice: it found this better than one
random rotation per image); a 4-way classifier on the backbone features predicts which rotation
was applied; the loss is the cross-entropy averaged over the 4B rotated copies.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.config import MethodConfig, bounded
from selfsup.core.errors import ConfigError
from selfsup.data.augment import AugmentSpec
from selfsup.methods.base import Method
from selfsup.methods.factory import register_method
from selfsup.models.heads import ProjectionHead

__all__ = ["NUM_ROTATIONS", "RotationConfig", "Rotation", "rotate_batch"]

NUM_ROTATIONS = 4


def rotate_batch(x: Tensor) -> tuple[Tensor, Tensor]:
    """The four rotations of every image, stacked rotation-major, with their labels.

    Label ``k`` (0..3) means ``torch.rot90(image, k, dims=(-2, -1))``: a rotation by ``k * 90``
    degrees counter-clockwise as the image is displayed (row 0 at the top). Rotation ``k`` of
    image ``b`` is row ``k * B + b``, so ``torch.rot90(out[k * B + b], -k, dims=(-2, -1))``
    recovers ``x[b]``.

    Args:
        x: float ``[B, C, S, S]`` (square, so every rotation keeps the shape).
    Returns:
        ``(rotated [4B, C, S, S], labels int64 [4B])``.
    """
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotate_batch needs square images, got {list(x.shape[-2:])}")
    rotated = torch.cat([torch.rot90(x, k, dims=(-2, -1)) for k in range(NUM_ROTATIONS)])
    labels = torch.arange(NUM_ROTATIONS, device=x.device).repeat_interleave(x.shape[0])
    return rotated, labels


@dataclass
class RotationConfig(MethodConfig):
    name: str = "rotation"
    # One mildly augmented view per image (the paper: random crops and flips, no colour).
    crop_scale: tuple[float, float] = bounded((0.6, 1.0), gt=0, le=1, pair=True)
    hflip_p: float = bounded(0.5, ge=0, le=1)
    # 0: a linear 4-way classifier on the pooled features; > 0: Linear-BN-ReLU-Linear with this
    # hidden width (the paper's ConvNet keeps its top layers as part of the rotation classifier).
    head_hidden_dim: int = bounded(0, ge=0)


@register_method("rotation")
class Rotation(Method):
    """RotNet (Gidaris, Singh, Komodakis, ICLR 2018, arXiv:1803.07728).

    Every image is rotated by 0, 90, 180 and 270 degrees in the same batch; a head on the backbone
    features classifies the rotation (4-way cross-entropy over the 4B copies).

    Shapes: ``views`` one float ``[B, C, S, S]``; rotated batch ``[4B, C, S, S]``; features
    ``[4B, num_features]``; logits ``[4B, 4]``. ``encoder`` is the backbone.
    """

    config_class = RotationConfig
    min_batch_size = 1  # four rotated copies per image: the classifier's BN always sees >= 4
    tiny = {"head_hidden_dim": 32}  # the MLP head, with its BatchNorm
    paper = "Gidaris, Singh, Komodakis, ICLR 2018, arXiv:1803.07728"
    sync_bn_default = False  # a per-sample loss: per-process BN statistics, as in the paper's multi-GPU training

    def __init__(self, cfg: RotationConfig, backbone: nn.Module, image_size: int, num_classes: int = 0):
        super().__init__(cfg, backbone, image_size, num_classes)
        if cfg.head_hidden_dim < 0:
            raise ConfigError(f"method.head_hidden_dim={cfg.head_hidden_dim} must be >= 0")
        dim = backbone.num_features
        self.head = (
            ProjectionHead(dim, cfg.head_hidden_dim, NUM_ROTATIONS)
            if cfg.head_hidden_dim
            else nn.Linear(dim, NUM_ROTATIONS)
        )

    @property
    def views(self) -> list[tuple[AugmentSpec, int]]:
        spec = AugmentSpec(
            size=self.image_size, crop_scale=tuple(self.cfg.crop_scale), hflip_p=self.cfg.hflip_p,
            jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0,
        )
        return [(spec, 1)]

    def training_step(self, views: list[Tensor], labels: Tensor, values: dict[str, float]) -> dict[str, Tensor]:
        """``views``: one float ``[B, C, S, S]``; returns the loss over the ``4B`` rotated copies.

        Logs ``rotation_acc``: the fraction of rotated copies whose rotation was predicted.
        """
        rotated, target = rotate_batch(views[0])
        h = self.backbone(rotated)  # [4B, F]: one backbone call for all rotations
        logits = self.head(h)  # [4B, 4]
        loss = F.cross_entropy(logits, target)
        acc = (logits.detach().argmax(dim=1) == target).float().mean()
        return {"loss": loss, "rotation_acc": acc, "features": h.detach()}
