"""What both transfer tasks share: the encoder (pretrained or random), the backbone regimes and norms, the
optimizer, the processes (one, or those ``./launch.sh transfer`` starts), the output folder and its JSON files."""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path

import torch
import yaml
from torch import nn

from selfsup.core.distributed import convert_sync_batchnorm, world_size
from selfsup.core.errors import ConfigError
from selfsup.core.files import atomic_write
from selfsup.models.backbones import reset_to_torch_defaults
from selfsup.runs.export import load_encoder
from selfsup.transfer.config import TransferConfig
from selfsup.transfer.features import FeatureMaps, feature_maps

__all__ = ["open_maps", "apply_regime", "keep_frozen_norms", "synchronise_norms", "make_optimizer", "output_dir",
           "write_json", "join_processes", "resolve_device", "regime_of"]

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)  # every BN, selfsup's SyncBatchNorm too


def join_processes(name: str) -> None:
    """Started by a launcher (``./launch.sh transfer``: torchrun's ``WORLD_SIZE`` > 1), join its process group
    through Accelerate, as ``selfsup train`` does (NCCL and this process's own GPU, or gloo on the CPU for
    ``train.device`` ``name`` = cpu or without CUDA). One process never touches torch.distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        from accelerate import PartialState

        PartialState(cpu=name == "cpu" or not torch.cuda.is_available())  # cpu: gloo (Accelerate's MULTI_CPU)


def resolve_device(name: str) -> torch.device:
    """This process's device for ``train.device`` (after :func:`join_processes`: the local rank's GPU)."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but no GPU is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and world_size() > 1:
        return torch.device("cuda", torch.cuda.current_device())  # the local rank's GPU (Accelerate set it)
    return torch.device(name)


def open_maps(encoder_path: str | Path, cfg: TransferConfig) -> tuple[FeatureMaps, list[float], list[float]]:
    """The export's :class:`FeatureMaps` and its normalisation (mean, std); ``model.init=random`` re-initialises
    the same architecture with PyTorch's defaults, seeded with ``train.seed`` (the random-init control)."""
    encoder = load_encoder(encoder_path)
    if cfg.model.init == "random":
        torch.manual_seed(cfg.train.seed)
        reset_to_torch_defaults(encoder)
    pre = encoder.preprocess
    return feature_maps(encoder, cfg.model.layers), pre.mean.flatten().tolist(), pre.std.flatten().tolist()


def regime_of(cfg: TransferConfig, default: str) -> str:
    return cfg.model.regime or default


def apply_regime(maps: FeatureMaps, regime: str, last: int) -> list[nn.Parameter]:
    """Set ``requires_grad`` on the encoder for ``regime`` and return its trainable parameters:
    ``frozen`` none, ``last_k`` those of the last ``last`` maps' stages, ``full`` all."""
    for p in maps.encoder.parameters():
        p.requires_grad_(regime == "full")
    if regime == "last_k":
        if last > len(maps.stages):
            raise ConfigError(f"model.train_stages={last} but the features have {len(maps.stages)} stages")
        for module in maps.stage_modules(last):
            for p in module.parameters():
                p.requires_grad_(True)
    return [p for p in maps.encoder.parameters() if p.requires_grad]


def keep_frozen_norms(maps: FeatureMaps, regime: str, norm: str = "frozen") -> None:
    """Call after ``model.train()``: the encoder's normalisation statistics stay frozen (eval mode), as in
    Detectron's fine-tuning protocol with small batches (He et al. 2019, "Rethinking ImageNet Pre-training",
    use frozen BN or SyncBN); a frozen encoder is wholly in eval mode (no dropout), so none of its tensors change.
    ``norm="sync"`` (``model.norm``): the norm layers whose weights train (per regime) stay in train mode, so
    their statistics come from the batch (synchronised over processes by :func:`synchronise_norms`)."""
    if regime == "frozen":
        maps.encoder.eval()
        return
    for module in maps.encoder.modules():
        if isinstance(module, _NORMS):
            trains = norm == "sync" and any(p.requires_grad for p in module.parameters(recurse=False))
            module.train(trains)


def synchronise_norms(model: nn.Module, encoder: nn.Module, norm: str, device: torch.device) -> nn.Module:
    """With several processes: the BatchNorm layers of ``model`` outside ``encoder`` (the new heads', never
    frozen) and, with ``norm="sync"``, the encoder's too become synchronised BN (statistics of the global batch,
    Peng et al. 2018; ``torch.nn.SyncBatchNorm`` on CUDA, :class:`selfsup.core.distributed.SyncBatchNorm` on the
    CPU), sharing their parameters and buffers (the optimizer and checkpoints see the same tensors and keys).
    Without it a head's BN would normalise each process's share alone and the result would depend on the
    process count. One process: ``model`` unchanged. Returns ``model``."""
    if world_size() == 1:
        return model
    inside = next(name for name, m in model.named_modules() if m is encoder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = convert_sync_batchnorm(model, exclude=() if norm == "sync" else (inside,), cuda=device.type == "cuda")
    for w in caught:  # its wording names the training config's key
        warnings.warn(str(w.message).replace("trainer.sync_bn", f"model.norm={norm}"), stacklevel=2)
    return model


def make_optimizer(head_params, backbone_params, cfg: TransferConfig) -> torch.optim.Optimizer:
    """AdamW: ``train.lr`` for the new layers, ``train.backbone_lr`` for the encoder's trainable parameters;
    cosine decay over ``train.steps`` (set on the returned optimizer's ``scheduler`` attribute)."""
    groups = [{"params": [p for p in head_params if p.requires_grad], "lr": cfg.train.lr}]
    if backbone_params:
        groups.append({"params": list(backbone_params), "lr": cfg.train.backbone_lr})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.train.weight_decay)
    opt.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.train.steps)
    return opt


def output_dir(cfg: TransferConfig, task: str, encoder_path: str | Path) -> Path:
    if cfg.run.dir:
        return Path(cfg.run.dir).expanduser()
    enc = Path(encoder_path).resolve()
    name = enc.parent.name if enc.name == "encoder" else enc.name
    return Path("runs") / "transfer" / f"{task}-{name}-{cfg.model.init}-s{cfg.train.seed}"


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1) + "\n"))


def write_config(out: Path, cfg: TransferConfig, task: str, encoder_path: str | Path) -> None:
    tree = {"task": task, "encoder": str(encoder_path), **dataclasses.asdict(cfg)}
    atomic_write(out / "config.yaml", lambda tmp: tmp.write_text(yaml.safe_dump(tree, sort_keys=False)))
