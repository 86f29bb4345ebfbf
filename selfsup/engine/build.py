"""Building a run's pieces from its config: the method around a fresh backbone, and the Accelerator."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import Accelerator

from selfsup.config import Config
from selfsup.core.errors import ConfigError, DataError
from selfsup.core.registry import METHODS
from selfsup.data import Split
from selfsup.engine.init_from import load_init_weights
from selfsup.engine.run_log import accelerator_trackers
from selfsup.methods import create_method
from selfsup.methods.base import Method
from selfsup.models.backbones import (
    create_backbone,
    default_model_args,
    is_sequence_backbone,
    reset_to_torch_defaults,
)


def build_method(cfg: Config, data: Split, *, init_weights: bool = True) -> Method:
    """The method around a freshly initialised backbone (initialisation seeded by ``trainer.seed``): timm's
    init, or PyTorch's ``reset_parameters()`` on every module with ``backbone.init=torch_default``.

    With ``backbone.init_from`` (and ``init_weights``) the backbone then takes those weights, before the
    method copies it (EMA teachers start from them too); the file read and its sha256 are written into
    ``cfg.backbone.init_from`` / ``init_sha256``, so the run's config.yaml and export record them
    (:mod:`selfsup.engine.init_from`). ``init_weights=False``: a random init whatever the config says.
    """
    _check_non_image_data(cfg, data)
    if METHODS.get(cfg.method.name).uses_labels and not data.classes:
        raise DataError(f"method.name={cfg.method.name} trains on labels, but the training data are unlabelled "
                        "(an image folder without class sub-folders): give <class>/<image> folders")
    if cfg.backbone.init == "torch_default" and cfg.backbone.pretrained:
        raise ConfigError("backbone.init=torch_default re-initialises the weights backbone.pretrained=true loads; "
                          "use one of them")
    torch.manual_seed(cfg.trainer.seed)
    channels, size = data.shape[0], data.shape[-1]
    model_args = {**default_model_args(cfg.backbone.name, tuple(data.shape[-2:])), **cfg.backbone.model_args}
    backbone = create_backbone(cfg.backbone.name, small_stem=cfg.backbone.small_stem,
                               pretrained=cfg.backbone.pretrained, in_chans=channels, **model_args)
    if cfg.backbone.init == "torch_default":
        reset_to_torch_defaults(backbone)  # still seeded by trainer.seed
    if init_weights and cfg.backbone.init_from:
        cfg.backbone.init_from, cfg.backbone.init_sha256 = load_init_weights(backbone, cfg.backbone)
    return create_method(cfg.method, backbone, image_size=size, num_classes=len(data.classes))


def _check_non_image_data(cfg: Config, data: Split) -> None:
    """Float data (sequences) are never augmented, so only label-trained methods make sense on them;
    NaN padding (variable lengths) needs a backbone that reads it as lengths."""
    if data.is_image:
        return
    if not METHODS.get(cfg.method.name).uses_labels:
        labelled = " or ".join(f"method.name={name}" for name in METHODS if METHODS.get(name).uses_labels)
        raise ConfigError(f"data.name={cfg.data.name} holds non-image data, which gets no augmentation: "
                          f"method.name={cfg.method.name} cannot learn from it; use {labelled}")
    if not is_sequence_backbone(cfg.backbone.name) and data.has_padding:
        raise ConfigError(f"variable-length sequences (padding) need a sequence backbone (lstm, gru, seq_transformer), "
                          f"not backbone.name={cfg.backbone.name}")


def make_accelerator(cfg: Config, run_dir: Path | None = None) -> Accelerator:
    """The Accelerator of a run: precision, CPU processes over gloo when launched without an accelerator,
    and with ``run_dir`` the experiment trackers of ``run.log_with`` (:mod:`selfsup.engine.run_log`)."""
    if cfg.trainer.precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("trainer.precision=fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
    # Launched processes (torchrun / accelerate launch) on a machine without an accelerator: CPU
    # processes over gloo. Accelerate picks MULTI_CPU only when told cpu=True; otherwise every
    # process would train alone on the whole job (and they would all write the run directory).
    cpu = not _has_accelerator() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    trackers = accelerator_trackers(cfg.run, run_dir) if run_dir is not None else []
    return Accelerator(mixed_precision={"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[cfg.trainer.precision], cpu=cpu,
                       log_with=trackers or None, project_dir=str(run_dir) if trackers else None)


def _has_accelerator() -> bool:
    probe = getattr(torch, "accelerator", None)  # torch >= 2.6: CUDA, XPU, MPS, ...
    return bool(probe.is_available()) if probe is not None else torch.cuda.is_available()
