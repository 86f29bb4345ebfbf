"""The typed configuration schema: one dataclass per section of a recipe.

A recipe's sections mirror :class:`Config`. The ``method`` section is typed by the config class
the chosen method registers (a subclass of :class:`MethodConfig`), so every method adds its own
keys. ``docs/config.md`` is generated from these dataclasses (``python -m selfsup.config.reference``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class Bounds:
    """The range a config value must lie in, declared on its field with :func:`bounded` and checked
    by :func:`~selfsup.config.checks.validate_config` (``None`` values are not checked).

    ``ge`` / ``gt`` bound it from below (closed / open), ``le`` / ``lt`` from above. ``pair``: the
    value is ``[low, high]`` with ``low <= high``, both inside the bounds (a crop-scale range).
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    pair: bool = False

    def __post_init__(self) -> None:
        if (self.ge is not None and self.gt is not None) or (self.le is not None and self.lt is not None):
            raise ValueError("a bound is closed (ge / le) or open (gt / lt), not both")
        if self.pair and (self.lower is None or self.upper is None):
            raise ValueError("a [low, high] pair needs a lower and an upper bound")

    @property
    def lower(self) -> float | None:
        return self.gt if self.gt is not None else self.ge

    @property
    def upper(self) -> float | None:
        return self.lt if self.lt is not None else self.le

    def admits(self, value: Any) -> bool:
        """Whether ``value`` (a number, or a ``[low, high]`` pair when ``pair``) lies in the bounds."""
        if self.pair:
            return self._admits_one(value[0]) and self._admits_one(value[1]) and value[0] <= value[1]
        return self._admits_one(value)

    def _admits_one(self, v: float) -> bool:
        return ((self.ge is None or v >= self.ge) and (self.gt is None or v > self.gt)
                and (self.le is None or v <= self.le) and (self.lt is None or v < self.lt))

    def describe(self) -> str:
        """The rule as the error message says it: ``>= 1``, ``> 0``, ``in [0, 1]``, ``in [0, 1)``, ..."""
        low_op, high_op = ("<" if self.gt is not None else "<="), ("<" if self.lt is not None else "<=")
        if self.pair:
            return f"[low, high] with {self.lower} {low_op} low <= high {high_op} {self.upper}"
        if self.lower is not None and self.upper is not None:
            left, right = ("(" if self.gt is not None else "["), (")" if self.lt is not None else "]")
            return f"in {left}{self.lower}, {self.upper}{right}"
        if self.lower is not None:
            return f"{low_op.replace('<', '>')} {self.lower}"
        return f"{high_op} {self.upper}"


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None, pair: bool = False, **metadata: Any) -> Any:
    """A dataclass field whose value is checked against a range when a config is loaded.

    ``proj_dim: int = bounded(128, ge=1)``, ``momentum: float = bounded(0.99, ge=0, le=1)``,
    ``crop_scale: tuple[float, float] = bounded((0.08, 1.0), gt=0, le=1, pair=True)``. Further
    keyword arguments go into the field's metadata as they are: ``help="..."`` (docs/config.md), or
    ``at_most_image_side=True``: the value may not exceed the shorter side of the training images
    (checked by ``validate_run`` once the data is known). A field without bounds is not range-checked.
    """
    return field(default=default, metadata={"bounds": Bounds(ge, gt, le, lt, pair), **metadata})


def field_bounds(f: dataclasses.Field) -> Bounds | None:
    """The :class:`Bounds` declared on a dataclass field, or ``None``."""
    return f.metadata.get("bounds")


@dataclass
class MethodConfig:
    """Base of every method's config; a method registers a subclass with its own keys."""

    name: str = "simclr"  # a registered method (`selfsup list`); its config class adds the method's own keys


@dataclass
class BackboneConfig:
    """The encoder: ``create_backbone(name, small_stem, pretrained, **model_args)``."""

    name: str = "resnet18"  # any timm model name, or a sequence model: lstm | gru | seq_transformer
    small_stem: bool = False  # 3x3 stride-1 first conv and no max-pool, for 32-px images
    pretrained: bool = False  # start from timm's pretrained weights (needs internet once)
    # keyword arguments of the backbone, e.g. {img_size: 32, patch_size: 4} (ViT) or {hidden_size: 128}
    # (RNN); backbone.model_args.KEY=value sets one
    model_args: dict = field(default_factory=dict)
    # the random init to train from: timm's own (e.g. a ResNet's zeroed last BN per block, a ViT's std-0.02
    # linears) or torch_default (PyTorch's reset_parameters() on every module: BN weight 1, Kaiming-uniform)
    init: Literal["timm", "torch_default"] = "timm"
    # start from trained weights: an exported encoder, a run directory (its encoder/, else its newest checkpoint)
    # or a checkpoint file; training records the file it read here (selfsup.engine.init_from)
    init_from: str | None = None
    init_sha256: str | None = None  # sha256 of init_from's file: filled in by training; set it to insist on those weights


@dataclass
class DataConfig:
    """The dataset: images as one uint8 tensor (in memory) or streamed from an ImageFolder."""

    name: str = "digits"  # digits | synthetic | imagefolder | shards | sequence | cifar10 | cifar100 | stl10
    train: str | None = None  # imagefolder / sequence: path of the training split; shards: folder, glob, {a..b} or URL
    val: str | None = None  # imagefolder / sequence: path of the evaluation split; shards: as data.train
    root: str | None = None  # torchvision datasets: where the files are (or go)
    image_size: int | None = bounded(None, ge=1)  # resize on load; None keeps the native size
    download: bool = False  # torchvision datasets: download into `root` when missing (needs internet)
    cache_dir: str | None = None  # decoded images and features; None: $SELFSUP_CACHE or ~/.cache/selfsup
    num_samples: int | None = bounded(None, ge=1)  # synthetic only: number of images
    num_classes: int | None = bounded(None, ge=1)  # synthetic only: number of classes
    on_bad_file: Literal["skip", "error"] = "skip"  # imagefolder: unreadable files are skipped (one warning) or fatal
    in_memory_max_gb: float = bounded(8.0, ge=0)  # imagefolder: larger decoded splits stream through DataLoader workers
    workers: int | None = None  # streaming DataLoader workers (None: one per CPU core, at most 8)
    streaming: Literal["auto", "always", "never"] = "auto"  # imagefolder: auto streams above in_memory_max_gb


@dataclass
class TrainerConfig:
    """The training loop: schedule, optimiser, precision, checkpoints, logging."""

    epochs: int = bounded(100, ge=1)  # schedule length in passes over the training split
    max_steps: int | None = bounded(None, ge=1)  # stop early (the schedules still span `epochs`)
    batch_size: int = bounded(256, ge=1)  # global, over all processes and accumulation steps
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype; fp16 (with a grad scaler) on CUDA only
    seed: int = bounded(0, ge=0)  # initialisation, data order and augmentation
    # any name of timm's optimizer factory (timm.optim.list_optimizers(): nesterov, adam, adamw, adagrad, rmsprop,
    # lamb, lars, lion, ...) over our parameter groups; sgd is SGD with momentum (timm's `momentum`; timm's own
    # `sgd` is Nesterov's: say nesterov); lars: timm's LARS (biases and norms not adapted)
    optimizer: str = "sgd"
    optimizer_args: dict = field(default_factory=dict)  # further keyword arguments of the optimizer: trainer.optimizer_args.eps=1e-6
    lr: float = bounded(0.3, gt=0)  # base learning rate, scaled by `lr_scaling` from batch 256
    # peak lr = lr x batch/256 (linear), lr x sqrt(batch/256) (sqrt), or lr as given (none)
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"
    # after the linear warm-up, per step: cosine to min_lr, linear to min_lr, step (x lr_gamma every lr_step_epochs),
    # multistep (x lr_gamma at each of lr_milestones), exponential (x lr_gamma per epoch), constant (the peak)
    schedule: Literal["cosine", "linear", "step", "multistep", "exponential", "constant"] = "cosine"
    min_lr: float = 0.0  # where cosine and linear end, and the floor of every decay, as a fraction of the peak learning rate
    warmup_epochs: float = bounded(10.0, ge=0)  # linear warm-up from 0 to the peak, then `schedule`
    lr_gamma: float = bounded(0.1, gt=0, le=1)  # step / multistep: factor at each decay; exponential: factor per epoch (e.g. 0.97)
    lr_step_epochs: float = bounded(30.0, gt=0)  # step: epochs between decays, counted from the start of the run
    lr_milestones: list[float] = field(default_factory=list)  # multistep: epochs of the run at which the lr is multiplied by lr_gamma
    weight_decay: float = bounded(1e-6, ge=0)  # never applied to biases and normalisation parameters
    momentum: float = bounded(0.9, ge=0, lt=1)  # SGD / LARS / RMSProp momentum; beta1 of Adam-like optimizers (adam, adamw, lamb, lion, ...)
    beta2: float | None = bounded(None, ge=0, lt=1)  # beta2 of Adam-like optimizers (None: the optimizer's default, 0.999 for adam/adamw)
    lars_trust_coefficient: float = 0.001  # LARS eta (You et al. 2017); vicreg-cifar10 uses 0.02, the usual CIFAR-10 setting
    lars_trust_clip: bool = False  # LARS: clip the layer-wise rate at the global rate (LARC)
    grad_clip: float | None = None  # max global gradient norm
    grad_accum: int = bounded(1, ge=1)  # micro-steps per optimizer step (batch_size stays the global batch)
    checkpoint_every: int = bounded(1000, ge=1)  # steps; a checkpoint is also written at the end
    keep_checkpoints: int = bounded(2, ge=0)  # the newest checkpoints kept in checkpoints/
    log_every: int = bounded(10, ge=1)  # steps between metrics.jsonl rows (and the only host syncs)
    channels_last: bool = False  # channels-last memory format for the model and the views
    compile: bool = False  # torch.compile the training step (the exported encoder stays the eager module)
    nonfinite: Literal["stop", "skip"] = "stop"  # a NaN/inf loss stops the run, or its step is skipped (and counted)
    sync_bn: bool | None = None  # BN statistics over the global batch with >1 process (None: the method's default)


@dataclass
class FinetuneConfig:
    """``selfsup eval --protocol finetune``: encoder + linear head trained on the labels (selfsup.evaluation.finetune)."""

    epochs: int = 20  # schedule length in passes over the training split
    max_steps: int | None = None  # stop early (the schedule still spans `epochs`)
    batch_size: int = 128
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1  # at batch 256, scaled linearly with batch_size
    weight_decay: float = 5e-4  # never on biases and normalisation parameters
    momentum: float = 0.9  # SGD momentum; AdamW's beta1
    warmup_epochs: float = 1.0  # linear warm-up, then cosine
    min_lr: float = 0.0  # end of the cosine, as a fraction of the peak
    train_blocks: int = -1  # -1: the whole encoder; k >= 0: only its last k blocks (0: the head alone)
    layer_decay: float = 1.0  # block i of n gets lr * layer_decay ** (n - i); the head gets lr
    crop_scale: tuple[float, float] = (0.35, 1.0)  # random resized crop of the training images
    hflip_p: float = 0.5  # 0 for data that is not mirror-symmetric (digits)
    label_smoothing: float = 0.0  # of the cross-entropy loss
    train_subset: int | None = None  # fine-tune on this many training images (a fixed random subset)
    from_scratch: bool = False  # the control: same architecture, random initialisation
    seed: int = 0  # head initialisation, data order, augmentation (and the from-scratch initialisation)


@dataclass
class EvalConfig:
    """Evaluation on frozen features (kNN, linear probe) at the end of training and by ``selfsup eval``."""

    at_end: bool = True  # evaluate the encoder when training ends
    knn_k: list[int] = field(default_factory=lambda: [20, 200])  # one kNN classifier per k (keys knn_k20, ...)
    knn_temperature: float = bounded(0.07, gt=0)  # T of the votes' weights exp(similarity / T)
    knn_index: Literal["flat", "ivf"] = "flat"  # faiss exact search, or an inverted file for millions of features
    linear: bool = True  # fit the linear probe (lr and weight decay chosen on held-out training images)
    linear_loss: Literal["softmax", "hinge"] = "softmax"  # linear probe: cross-entropy or multiclass SVM (hinge)
    # the hinge's form: sum over the wrong classes (Weston & Watkins 1999) or the worst one only (Crammer & Singer 2001)
    linear_hinge_form: Literal["weston_watkins", "crammer_singer"] = "weston_watkins"
    linear_solver: Literal["sgd", "lbfgs"] = "sgd"  # sgd: the lr x wd grid as parallel heads; lbfgs: exact, softmax only
    # ViT features: cls = the encoder's pooled feature (timm's: the class token unless global_pool says otherwise),
    # mean = the mean of the patch tokens after the final norm (selfsup.models.vit_patches.forward_patches)
    pool: Literal["cls", "mean"] = "cls"
    random_baseline: bool = False  # also evaluate 2 random inits of the architecture (timm's, PyTorch reset_parameters())
    batch_size: int = bounded(512, ge=1)  # images per batch when extracting features
    # online monitoring during training (selfsup.engine.monitor): periodic kNN, online linear classifier on
    # detached features, collapse indicators; it never changes the trained weights
    online: bool = True  # monitor the run: rows get knn_online, online_linear_*, embedding_std, effective_rank
    online_every: float = bounded(5.0, ge=0)  # epochs between online kNN rows (0: no online kNN)
    online_every_steps: int | None = bounded(None, ge=1)  # steps between online kNN rows (overrides online_every)
    online_knn_bank: int = bounded(1000, ge=1)  # training images in the online kNN's bank (fixed, seeded subset)
    online_knn_queries: int = bounded(500, ge=1)  # held-out training images it classifies (disjoint from the bank)
    online_knn_k: int = bounded(20, ge=1)  # neighbours of the online kNN
    online_linear_lr: float = bounded(1e-3, gt=0)  # Adam lr of the online linear classifier
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


@dataclass
class RunConfig:
    """The run directory and what is written into it besides metrics.jsonl, checkpoints and the encoder."""

    dir: str | None = None  # default: runs/<recipe name>
    # experiment trackers (Accelerate's) that also get metrics.jsonl's rows: a list or a comma string of tensorboard,
    # wandb, mlflow, comet_ml, aim, clearml, dvclive, swanlab, trackio; none: metrics.jsonl only; auto: tensorboard
    # when run.tensorboard is true and tensorboard is installed, else none (as before log_with existed)
    log_with: list[str] | str = "auto"
    tensorboard: bool = True  # read by log_with=auto only: log to <run.dir>/tensorboard when tensorboard is installed
    project: str = "selfsup"  # W&B project / MLflow experiment the run is logged in (the run is named after run.dir)
    plots: bool = True  # write <run.dir>/plots/*.png at the end when matplotlib is installed
    threads: int | Literal["auto"] = "auto"  # CPU threads of torch, faiss, BLAS; auto: the cores this process may use (env SELFSUP_THREADS)


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
