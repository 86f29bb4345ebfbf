"""The detectors ``selfsup transfer detection`` builds, one builder per ``model.detector``, all on the same
backbone: the encoder's feature maps + torchvision's FPN (:class:`~selfsup.transfer.features.WithFPN`, Lin et al.
2017: one map per encoder stage plus a max-pooled ``"pool"`` level).

- ``faster_rcnn``: Faster R-CNN (Ren et al. 2015), two stages: RPN proposals, RoIAlign, box MLP;
- ``mask_rcnn``: Mask R-CNN (He et al. 2017), Faster R-CNN plus a mask head (the only one with mask AP);
- ``retinanet``: RetinaNet (Lin et al. 2017, "Focal Loss for Dense Object Detection"), one stage: per-anchor
  sigmoid classification trained with the focal loss and box regression, four 3x3 convs per branch;
- ``fcos``: FCOS (Tian et al. 2019), one stage and anchor-free: each location of level ``l`` regresses the
  distances to its box's sides, with centre-ness; a box goes to the level whose stride-scaled range holds it.

Anchors, one size per level: ``model.anchor_scale x stride`` with aspect ratios 0.5, 1, 2 (Faster / Mask R-CNN's
RPN, RetinaNet). FCOS has no anchors; torchvision's FCOS still takes an ``AnchorGenerator`` with one square
"anchor" per location whose side must equal the level's stride (it sets the level's size range, 4-8 x stride,
and the centre-sampling radius), so ``model.anchor_scale`` does not apply to it.

Every builder's ``num_classes`` excludes the background: the detectors get ``num_classes + 1`` outputs and label
``k`` (1..K) is category ``k``, column 0 the background (never a positive for the one-stage heads).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection._utils import BoxLinearCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.fcos import FCOSClassificationHead, FCOSHead, FCOSRegressionHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from selfsup.transfer.features import FeatureMaps, WithFPN

__all__ = ["DETECTORS", "MASK_DETECTORS", "build_detector"]


def _anchors(backbone: WithFPN, scale: float, ratios: tuple[float, ...]) -> AnchorGenerator:
    sizes = tuple((max(1, round(scale * s)),) for s in backbone.strides)
    return AnchorGenerator(sizes, (ratios,) * len(sizes))


def _two_stage(backbone: WithFPN, num_classes: int, anchor_scale: float, masks: bool, **transform) -> nn.Module:
    """Faster R-CNN, or Mask R-CNN with ``masks``. The heads scale with the FPN's width ``c``: a box MLP of width
    ``4c``, a mask head of four ``c``-wide 3x3 convs (at ``c = 256`` torchvision's defaults: 1024 and 256)."""
    c, names = backbone.out_channels, list(backbone.body.names)
    kwargs = dict(rpn_anchor_generator=_anchors(backbone, anchor_scale, (0.5, 1.0, 2.0)),
                  box_roi_pool=MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2),
                  box_head=TwoMLPHead(c * 7 * 7, 4 * c), box_predictor=FastRCNNPredictor(4 * c, num_classes + 1),
                  **transform)
    if masks:
        return MaskRCNN(backbone, mask_roi_pool=MultiScaleRoIAlign(names, 14, 2),
                        mask_head=MaskRCNNHeads(c, (c,) * 4, 1),
                        mask_predictor=MaskRCNNPredictor(c, c, num_classes + 1), **kwargs)
    return FasterRCNN(backbone, **kwargs)


def _retinanet(backbone: WithFPN, num_classes: int, anchor_scale: float, **transform) -> nn.Module:
    """RetinaNet: torchvision's head (no normalisation, as the paper), focal loss alpha 0.25, gamma 2."""
    return RetinaNet(backbone, num_classes + 1, anchor_generator=_anchors(backbone, anchor_scale, (0.5, 1.0, 2.0)),
                     **transform)


class _FCOSHead(FCOSHead):
    """torchvision's FCOS head with GroupNorm of ``groups`` groups (its own is fixed at 32)."""

    def __init__(self, in_channels: int, num_classes: int, groups: int):
        nn.Module.__init__(self)  # FCOSHead.__init__ would build 32-group norms first
        norm = partial(nn.GroupNorm, groups)
        self.box_coder = BoxLinearCoder(normalize_by_size=True)
        self.classification_head = FCOSClassificationHead(in_channels, 1, num_classes, norm_layer=norm)
        self.regression_head = FCOSRegressionHead(in_channels, 1, norm_layer=norm)


def _fcos(backbone: WithFPN, num_classes: int, anchor_scale: float, **transform) -> nn.Module:
    """FCOS: torchvision's head with GroupNorm of ``gcd(32, c)`` groups (32 as the paper at ``c = 256``; a narrow
    FPN gets fewer), one stride-sized location box per level (``anchor_scale`` unused)."""
    c = backbone.out_channels
    head = _FCOSHead(c, num_classes + 1, math.gcd(32, c))
    return FCOS(backbone, num_classes + 1, anchor_generator=_anchors(backbone, 1.0, (1.0,)), head=head, **transform)


DETECTORS: dict[str, Callable[..., nn.Module]] = {
    "faster_rcnn": partial(_two_stage, masks=False),
    "mask_rcnn": partial(_two_stage, masks=True),
    "retinanet": _retinanet,
    "fcos": _fcos,
}
MASK_DETECTORS = frozenset({"mask_rcnn"})  # the detectors that predict instance masks (and get mask AP)


def build_detector(kind: str, maps: FeatureMaps, num_classes: int, *, mean: list[float], std: list[float],
                   min_size: int, max_size: int, fpn_channels: int = 64, anchor_scale: float = 8.0) -> nn.Module:
    """The ``kind`` detector (a :data:`DETECTORS` key) on ``maps`` + an FPN of width ``fpn_channels``;
    ``num_classes`` without the background. Its transform normalises float images in [0, 1] with the export's
    ``mean`` / ``std`` and resizes them to ``min_size`` (longest side at most ``max_size``).
    Training: ``model(images, targets) -> {loss name: scalar}``; eval: ``model(images) -> [{"boxes" [n, 4]
    (x1, y1, x2, y2), "labels" [n] (1..K), "scores" [n]} (+ "masks" [n, 1, H, W] for mask_rcnn)]``."""
    if kind not in DETECTORS:
        raise ValueError(f"unknown detector {kind!r}; known: {sorted(DETECTORS)}")
    transform = dict(min_size=min_size, max_size=max_size, image_mean=mean, image_std=std)
    return DETECTORS[kind](WithFPN(maps, fpn_channels), num_classes, anchor_scale, **transform)
