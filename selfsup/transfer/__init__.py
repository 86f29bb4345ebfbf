"""Dense transfer: exported encoders as backbones for detection and semantic segmentation.

- :mod:`~selfsup.transfer.features`: an encoder's multi-scale feature maps (strides, channels) and an FPN on them;
- :mod:`~selfsup.transfer.scenes`: a generated scene dataset (COCO JSON + VOC-style PNG masks);
- :mod:`~selfsup.transfer.coco`: reading and checking COCO / VOC-layout data, COCO evaluation (pycocotools);
- :mod:`~selfsup.transfer.segmentation`, :mod:`~selfsup.transfer.detection`: the two transfer tasks;
  :mod:`~selfsup.transfer.detectors`: the detectors by ``model.detector`` (Faster / Mask R-CNN, RetinaNet, FCOS);
  :mod:`~selfsup.transfer.loop`: the training loop both share (checkpoints, resume, finished runs refused);
- :mod:`~selfsup.transfer.encoder_plots`: an encoder's first-layer filters and feature maps as PNGs (``selfsup plot``).

It sits above :mod:`selfsup.runs` (it loads exports with :func:`selfsup.load_encoder`); nothing below imports it.
"""
from selfsup.transfer.features import FeatureMaps, WithFPN, feature_maps, load_feature_maps

__all__ = ["FeatureMaps", "WithFPN", "feature_maps", "load_feature_maps"]
