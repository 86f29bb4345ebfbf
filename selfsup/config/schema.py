"""The typed configuration schema: one dataclass per section of a recipe.

A recipe's sections mirror :class:`Config`. The ``method`` section is typed by the config class
the chosen method registers (a subclass of :class:`MethodConfig`), so every method adds its own
keys. ``docs/config.md`` is generated from these dataclasses (``python -m selfsup.config.reference``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class MethodConfig:
    """Base of every method's config; a method registers a subclass with its own keys."""

    name: str = "simclr"


@dataclass
class BackboneConfig:
    name: str = "resnet18"
    small_stem: bool = False  # 3x3 stride-1 first conv and no max-pool, for 32-px images
    pretrained: bool = False
    model_args: dict = field(default_factory=dict)  # **kwargs for create_backbone (timm or sequence model)


@dataclass
class DataConfig:
    name: str = "digits"  # digits | synthetic | imagefolder | sequence | cifar10 | cifar100 | stl10
    train: str | None = None  # imagefolder / sequence: path of the training split
    val: str | None = None  # imagefolder / sequence: path of the evaluation split
    root: str | None = None  # torchvision datasets: where the files are (or go)
    image_size: int | None = None  # resize on load; None keeps the native size
    download: bool = False
    cache_dir: str | None = None
    num_samples: int | None = None  # synthetic only
    num_classes: int | None = None  # synthetic only
    on_bad_file: Literal["skip", "error"] = "skip"  # imagefolder: unreadable files are skipped (one warning) or fatal
    in_memory_max_gb: float = 8.0  # imagefolder: larger decoded splits stream through DataLoader workers
    workers: int | None = None  # streaming DataLoader workers (None: one per CPU core, at most 8)
    streaming: Literal["auto", "always", "never"] = "auto"  # imagefolder: auto streams above in_memory_max_gb


@dataclass
class TrainerConfig:
    epochs: int = 100
    max_steps: int | None = None  # stop early (the schedules still span `epochs`)
    batch_size: int = 256  # global, over all processes and accumulation steps
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    seed: int = 0
    optimizer: Literal["sgd", "adamw", "lars"] = "sgd"
    lr: float = 0.3  # base learning rate, scaled by `lr_scaling` from batch 256
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"
    min_lr: float = 0.0  # end of the cosine, as a fraction of the peak learning rate
    warmup_epochs: float = 10.0
    weight_decay: float = 1e-6  # never applied to biases and normalisation parameters
    momentum: float = 0.9  # SGD / LARS momentum; AdamW's beta1
    lars_trust_coefficient: float = 0.001  # LARS eta (You et al. 2017); vicreg-cifar10 uses 0.02, the usual CIFAR-10 setting
    lars_trust_clip: bool = False  # LARS: clip the layer-wise rate at the global rate (LARC)
    grad_clip: float | None = None  # max global gradient norm
    grad_accum: int = 1
    checkpoint_every: int = 1000  # steps; a checkpoint is also written at the end
    keep_checkpoints: int = 2
    log_every: int = 10  # steps between metrics.jsonl rows (and the only host syncs)
    channels_last: bool = False
    compile: bool = False  # torch.compile the training step (the exported encoder stays the eager module)
    nonfinite: Literal["stop", "skip"] = "stop"  # a NaN/inf loss stops the run, or its step is skipped (and counted)
    sync_bn: bool | None = None  # BN statistics over the global batch with >1 process (None: the method's default)


@dataclass
class FinetuneConfig:
    """``selfsup eval --protocol finetune``: encoder + linear head trained on the labels (selfsup.evaluation.finetune)."""

    epochs: int = 20
    max_steps: int | None = None  # stop early (the schedule still spans `epochs`)
    batch_size: int = 128
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1  # at batch 256, scaled linearly with batch_size
    weight_decay: float = 5e-4  # never on biases and normalisation parameters
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    min_lr: float = 0.0  # end of the cosine, as a fraction of the peak
    train_blocks: int = -1  # -1: the whole encoder; k >= 0: only its last k blocks (0: the head alone)
    layer_decay: float = 1.0  # block i of n gets lr * layer_decay ** (n - i); the head gets lr
    crop_scale: tuple[float, float] = (0.35, 1.0)  # random resized crop of the training images
    hflip_p: float = 0.5  # 0 for data that is not mirror-symmetric (digits)
    label_smoothing: float = 0.0
    train_subset: int | None = None  # fine-tune on this many training images (a fixed random subset)
    from_scratch: bool = False  # the control: same architecture, random initialisation
    seed: int = 0


@dataclass
class EvalConfig:
    at_end: bool = True  # evaluate the encoder when training ends
    knn_k: list[int] = field(default_factory=lambda: [20, 200])
    knn_temperature: float = 0.07
    knn_index: Literal["flat", "ivf"] = "flat"  # faiss exact search, or an inverted file for millions of features
    linear: bool = True
    linear_loss: Literal["softmax", "hinge"] = "softmax"  # linear probe: cross-entropy or Crammer-Singer multiclass SVM
    linear_solver: Literal["sgd", "lbfgs"] = "sgd"  # sgd: the lr x wd grid as parallel heads; lbfgs: exact, softmax only
    random_baseline: bool = False  # also evaluate a randomly initialised encoder, for comparison
    batch_size: int = 512
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


@dataclass
class RunConfig:
    dir: str | None = None  # default: runs/<recipe name>
    tensorboard: bool = True  # also log metrics.jsonl's rows to <run.dir>/tensorboard when tensorboard is installed
    plots: bool = True  # write <run.dir>/plots/*.png at the end when matplotlib is installed


@dataclass
class Config:
    method: MethodConfig = field(default_factory=MethodConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    resume: str = "auto"  # auto | never | PATH of a checkpoint
    recipe: str = ""  # the recipe's name, recorded for the run directory and the export


def config_to_dict(cfg: Any) -> dict:
    """A plain nested dict (lists, not tuples) fit for YAML and JSON."""
    return _plain(dataclasses.asdict(cfg))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
