"""Dense transfer: exported encoders as backbones for detection and semantic segmentation.

- :mod:`~selfsup.transfer.features`: an encoder's multi-scale feature maps (strides, channels) and an FPN on them;
- :mod:`~selfsup.transfer.scenes`: a generated scene dataset (COCO JSON + VOC-style PNG masks);
- :mod:`~selfsup.transfer.coco`: reading and checking COCO / VOC-layout data, COCO evaluation (pycocotools);
- :mod:`~selfsup.transfer.segmentation`, :mod:`~selfsup.transfer.detection`: the two transfer tasks.

It sits above :mod:`selfsup.runs` (it loads exports with :func:`selfsup.load_encoder`); nothing below imports it.
"""
from selfsup.transfer.features import FeatureMaps, WithFPN, feature_maps, load_feature_maps

__all__ = ["FeatureMaps", "WithFPN", "feature_maps", "load_feature_maps"]
