"""The method contract every pretext method (and every supervised baseline) keeps.

Data flow: the trainer slices a uint8 batch, the :class:`~selfsup.data.augment.ViewMaker` built
from ``method.views`` turns it into float views on the device, and the trainer calls the
method (``forward`` is ``training_step``, so DDP's hooks run) and then ``on_step_end``.
Scheduled values (lr, EMA momentum, teacher temperature, ...) arrive precomputed per step in
``values``; a method never knows about epochs. Everything a method must carry across steps
(teachers, queues, centres) is a parameter or a buffer, so it is checkpointed with the model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from selfsup.config import MethodConfig
from selfsup.core.errors import ConfigError
from selfsup.data.augment import AugmentSpec


@dataclass(frozen=True)
class LrRule:
    """How one submodule's learning rate follows the schedule.

    ``scale`` multiplies the lr (e.g. a faster predictor: Tian et al. 2021, "Understanding
    self-supervised learning dynamics without contrastive pairs", arXiv:2102.06810, study the
    predictor's relative learning rate); ``fixed`` holds it at the peak lr with no warm-up or
    decay (SimSiam's predictor: Chen & He 2021, arXiv:2011.10566, sec. 4.2, table 1c).
    """

    scale: float = 1.0
    fixed: bool = False

    def __post_init__(self) -> None:
        if self.scale <= 0:
            raise ConfigError(f"learning-rate scale {self.scale} must be > 0")


# training_step's optional detached entries for the online monitor (see Method.training_step)
MONITOR_OUTPUTS = ("features", "embeddings")


class Method(nn.Module):
    """Base class: subclasses set ``config_class`` and implement ``training_step``.

    Args:
        cfg: the method's config (an instance of ``config_class``).
        backbone: a module mapping float [B, C, H, W] -> [B, backbone.num_features].
        image_size: side of the training images in px (views are sized from it).
        num_classes: number of label classes (used by supervised baselines only).
    """

    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    min_batch_size: ClassVar[int] = 1  # smallest per-process batch the loss is defined for
    uses_labels: ClassVar[bool] = False  # True for methods trained with labels (supervised baselines, SupCon)
    paper: ClassVar[str] = ""
    # Default of ``trainer.sync_bn``: with several processes, BN layers normalise with the global
    # batch's statistics, so N processes compute what 1 process computes on the global batch.
    sync_bn_default: ClassVar[bool] = True
    # Why the method runs the backbone on inputs of another size than the training images (DINO's
    # local crops, jigsaw's tiles), or None. A backbone built for one input geometry (a sequence
    # model, a ViT without dynamic_img_size) cannot train such a method; `selfsup list` says so.
    multi_size: ClassVar[str | None] = None
    # Why the method needs a ViT's patch tokens (MAE, iBOT, I-JEPA), or None: any other backbone is refused
    # in one line (selfsup.models.vit_patches.require_vit), and tests that build every registered method
    # give such a method a tiny ViT instead of their tiny ResNet.
    needs_vit: ClassVar[str | None] = None
    # ``method.*`` overrides for a tiny run that still takes every path of the method (small heads,
    # e.g. DINO's local crops on): what tests that train every registered method apply.
    tiny: ClassVar[dict[str, Any]] = {}

    def __init__(self, cfg: MethodConfig, backbone: nn.Module, image_size: int, num_classes: int = 0):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.image_size = image_size
        self.num_classes = num_classes

    @property
    def views(self) -> list[tuple[AugmentSpec, int]]:
        """The views this method needs per image: (augmentation, count) pairs."""
        raise NotImplementedError

    @property
    def encoder(self) -> nn.Module:
        """The module to evaluate and export: float [B, C, H, W] -> [B, num_features]."""
        return self.backbone

    @property
    def local_bn_modules(self) -> tuple[str, ...]:
        """Dotted names of submodules whose BN keeps per-process statistics even with ``sync_bn``
        (e.g. MoCo's shuffle-BN key encoder). Default: none."""
        return ()

    @property
    def lr_rules(self) -> dict[str, LrRule]:
        """Learning-rate rules for submodules (dotted name -> :class:`LrRule`),
        e.g. a faster or unscheduled predictor. Default: every parameter follows the schedule."""
        return {}

    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        """Per-step values beyond lr / weight decay (EMA momentum, teacher temperature, ...)."""
        return {}

    def training_step(
        self, views: list[torch.Tensor], labels: torch.Tensor, values: dict[str, float]
    ) -> dict[str, torch.Tensor]:
        """One step's loss. ``views``: float [B, C, h, w] each; returns {"loss": scalar, **logs}.

        Logs are scalars. Two optional, detached entries feed the online monitor
        (:mod:`selfsup.engine.monitor`) and are never logged as they are: ``"features"``, the backbone's
        features [V * B, D] of V views stacked view-major (row ``v * B + i`` is image ``i``), for the online
        linear classifier; ``"embeddings"`` [V * B, d], what the loss compares (projections), for the
        collapse indicators. A method never reads ``labels`` unless ``uses_labels``."""
        raise NotImplementedError

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor, values: dict[str, float]) -> dict[str, torch.Tensor]:
        return self.training_step(views, labels, values)

    def on_after_backward(self, values: dict[str, float]) -> None:
        """After the gradients of a step are complete, before clipping and the optimizer step
        (e.g. DINO cancels the last layer's gradients during its first epoch). Default: nothing."""

    @torch.no_grad()
    def on_step_end(self, values: dict[str, float]) -> None:
        """After the optimizer step: EMA teachers, queues, centres. Default: nothing."""
