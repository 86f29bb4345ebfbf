"""Fine-tuning protocol: the encoder plus a linear head, trained end to end on the labels.

Transfer regimes (Yosinski et al. 2014, "How transferable are features in deep neural
networks?", arXiv:1411.1792): fine-tune the whole encoder (``train_blocks=-1``), only its last
``k`` blocks (``train_blocks=k``; the first blocks stay frozen, bit for bit, batch-norm
statistics included), or the head alone on augmented data (``train_blocks=0``). Optional
layer-wise learning-rate decay (Clark et al. 2020, ELECTRA, arXiv:2003.10555, appendix A; Bao
et al. 2021, BEiT, arXiv:2106.08254): block ``i`` of ``n`` (0 = the stem, ``n - 1`` = the block
next to the head) learns at ``lr * layer_decay ** (n - i)``, the head at ``lr``.
``from_scratch=True`` is the control: the same architecture and schedule from a random
initialisation.

The schedule is the trainer's: linear warmup then cosine, one value per step
(:func:`selfsup.core.schedules.warmup_cosine`), the peak rate scaled linearly from batch 256.
Training views are random resized crops + horizontal flips made batched on the device
(:class:`selfsup.data.augment.ViewMaker`); the test split is only normalised. The result is the
**final** epoch's top-1 / top-5 on the test split: no early stopping, no best epoch.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.config import FinetuneConfig
from selfsup.core.errors import ConfigError, DataError
from selfsup.core.progress import progress_bar
from selfsup.core.schedules import scaled_lr, warmup_cosine
from selfsup.data import Split
from selfsup.data.augment import AugmentSpec, ViewMaker, normalize
from selfsup.evaluation.knn import true_class_rank
from selfsup.models.backbones import create_backbone

__all__ = ["FinetuneConfig", "encoder_blocks", "finetune", "finetune_model", "finetune_param_groups", "fresh_copy", "validate_finetune"]


class Classifier(nn.Module):
    """``encoder`` (features [B, D]) followed by a linear head to ``num_classes`` logits."""

    def __init__(self, encoder: nn.Module, num_features: int, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(num_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


def encoder_blocks(encoder: nn.Module) -> list[list[tuple[str, nn.Parameter]]]:
    """The encoder's parameters in blocks ordered from the input to the output.

    timm models group their parameters with ``group_matcher(coarse=True)``: block 0 is the stem,
    then one block per stage (ResNet ``layer1..4``, ConvNeXt stages) or per transformer block
    (ViT ``blocks.i``; the final norm joins the last block). Models without a matcher (the
    sequence backbones) give one block per top-level child that holds parameters.
    Every parameter lands in exactly one block.
    """
    named = dict(encoder.named_parameters())
    matcher = getattr(encoder, "group_matcher", None)
    groups: list[list[str]] = []
    if callable(matcher):
        from timm.models import group_parameters

        grouped = group_parameters(encoder, matcher(coarse=True))
        groups = [list(grouped[k]) for k in sorted(grouped)]
    else:
        for child_name, child in encoder.named_children():
            names = [f"{child_name}.{n}" for n, _ in child.named_parameters()]
            if names:
                groups.append(names)
        direct = [n for n, _ in encoder.named_parameters(recurse=False)]
        if direct:  # tokens / embeddings owned by the model itself: with the first block
            groups = [direct + (groups[0] if groups else [])] + groups[1:]
    seen = [n for g in groups for n in g]
    missing = [n for n in named if n not in set(seen)]
    if missing:  # defensive: a matcher that skipped parameters puts them in the last block
        groups[-1].extend(missing)
    if len(seen) != len(set(seen)):
        raise RuntimeError("encoder_blocks: a parameter was assigned to two blocks")
    return [[(n, named[n]) for n in g] for g in groups if g]


def validate_finetune(cfg: FinetuneConfig) -> FinetuneConfig:
    """Range checks of ``eval.finetune.*``; raises a one-line ConfigError naming the key."""
    def fail(key: str, rule: str) -> ConfigError:
        return ConfigError(f"config key 'eval.finetune.{key}' must be {rule}, got {getattr(cfg, key)}")

    for key in ("epochs", "batch_size"):
        if getattr(cfg, key) < 1:
            raise fail(key, ">= 1")
    for key in ("max_steps", "train_subset"):
        if getattr(cfg, key) is not None and getattr(cfg, key) < 1:
            raise fail(key, ">= 1 (or null)")
    for key in ("lr", "weight_decay", "warmup_epochs", "label_smoothing", "seed"):
        if getattr(cfg, key) < 0:
            raise fail(key, ">= 0")
    if not 0 <= cfg.momentum < 1:
        raise fail("momentum", "in [0, 1)")
    if not 0 <= cfg.min_lr <= 1:
        raise fail("min_lr", "in [0, 1] (a fraction of the peak learning rate)")
    if not 0 < cfg.layer_decay <= 1:
        raise fail("layer_decay", "in (0, 1] (1: no decay)")
    if cfg.train_blocks < -1:
        raise fail("train_blocks", "-1 (all) or a number of blocks >= 0")
    if not 0 <= cfg.hflip_p <= 1:
        raise fail("hflip_p", "in [0, 1]")
    if not 0 <= cfg.label_smoothing < 1:
        raise fail("label_smoothing", "in [0, 1)")
    lo, hi = cfg.crop_scale
    if not 0 < lo <= hi <= 1:
        raise fail("crop_scale", "[low, high] with 0 < low <= high <= 1")
    return cfg


def finetune_param_groups(model: Classifier, cfg: FinetuneConfig) -> list[dict]:
    """Freeze all but the last ``cfg.train_blocks`` encoder blocks and build the optimizer's groups.

    One group per (block, decayed or not): weights are decayed, biases and normalisation
    parameters (ndim <= 1) are not. Each group carries ``lr_scale``: block ``i`` of ``n`` gets
    ``cfg.layer_decay ** (n - i)``, the head 1; the learning rate of a group at a step is the
    schedule's value times its ``lr_scale``. Frozen parameters get ``requires_grad=False`` and
    appear in no group (so no weight decay or momentum touches them).
    """
    blocks = encoder_blocks(model.encoder)
    n = len(blocks)
    trainable_from = 0 if cfg.train_blocks < 0 else max(n - cfg.train_blocks, 0)
    layers = [(i, params, cfg.layer_decay ** (n - i)) for i, params in enumerate(blocks)]
    layers.append((n, list(model.head.named_parameters()), 1.0))
    groups = []
    for i, params, scale in layers:
        train = i >= trainable_from
        for _, p in params:
            p.requires_grad_(train)
        if not train:
            continue
        decay = [p for _, p in params if p.ndim > 1]
        no_decay = [p for _, p in params if p.ndim <= 1]
        for ps, wd in ((decay, cfg.weight_decay), (no_decay, 0.0)):
            if ps:
                groups.append({"params": ps, "weight_decay": wd, "lr_scale": scale, "block": i})
    return groups


def fresh_copy(encoder: nn.Module, seed: int) -> nn.Module:
    """A randomly initialised encoder of the same architecture (seeded), for the from-scratch control."""
    spec = getattr(encoder, "selfsup_spec", None)
    if spec is None:
        raise ConfigError("eval.finetune.from_scratch=true needs an encoder built by selfsup (it records how to rebuild it)")
    torch.manual_seed(seed)
    fresh = create_backbone(spec["name"], small_stem=spec["small_stem"], in_chans=spec["in_chans"],
                            **spec["model_args"])
    for attr in ("pretrained_cfg", "default_cfg"):
        if hasattr(encoder, attr):
            setattr(fresh, attr, getattr(encoder, attr))
    return fresh


def _num_features(encoder: nn.Module, example: Tensor) -> int:
    dim = getattr(encoder, "num_features", None)
    if isinstance(dim, int) and dim > 0:
        return dim
    was = encoder.training
    encoder.eval()
    with torch.no_grad():
        dim = int(encoder(example).shape[1])
    encoder.train(was)
    return dim


def _freeze_norm_statistics(model: nn.Module) -> None:
    """Put modules whose own parameters are all frozen in eval mode, so their batch-norm running
    statistics (and dropout) stay as they are: a frozen block is frozen bit for bit."""
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if own and not any(p.requires_grad for p in own):
            module.eval()


def _subset(num_samples: int, n: int | None, seed: int) -> Tensor | None:
    """The indices (in order) of a seeded random subset of ``n`` samples; ``None``: all of them."""
    if not n or n >= num_samples:
        return None
    return torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))[:n].sort().values


@torch.no_grad()
def _test_logits(model: nn.Module, data: Split, mean, std, batch_size: int, device) -> Tensor:
    model.eval()
    out = []
    for x in data.sequential_batches(batch_size):
        x = x.to(device)
        x = x if x.is_floating_point() else x.float().div_(255)
        out.append(model(normalize(x, mean, std)).float().cpu())
    return torch.cat(out)


def finetune(encoder: nn.Module, train: Split, test: Split, cfg: FinetuneConfig, *,
             device=None, progress: bool = True, eval_batch_size: int = 512) -> dict:
    """Fine-tune a copy of ``encoder`` + a new linear head on ``train``; score the final model on ``test``.

    ``encoder`` itself is not modified. Both splits are normalised with ``train``'s statistics.
    Returns ``{"top1", "top5", "steps", "epochs", "train_images", "final_loss", "seconds", "blocks",
    "trained_blocks", "settings"}`` (accuracies as fractions, of the model after the last step;
    ``settings`` is ``cfg`` as a dict, so a result can be matched to its protocol).
    """
    if list(train.classes) != list(test.classes):
        raise DataError("the training and test splits have different classes: labels would not match")
    model, info = finetune_model(encoder, train, cfg, device=device, progress=progress)
    logits = _test_logits(model, test, train.mean, train.std, eval_batch_size, info.pop("device"))
    rank = true_class_rank(logits, test.labels)
    info.pop("group_lrs")
    return {"top1": float((rank < 1).float().mean()), "top5": float((rank < min(5, len(train.classes))).float().mean()),
            **info, "settings": _settings(cfg)}


def finetune_model(encoder: nn.Module, train: Split, cfg: FinetuneConfig, *, device=None,
                   progress: bool = True) -> tuple[Classifier, dict]:
    """Train a copy of ``encoder`` (or a fresh one: ``cfg.from_scratch``) + a linear head on ``train``.

    Returns the trained :class:`Classifier` and ``{"steps", "epochs", "train_images", "final_loss",
    "seconds", "blocks", "trained_blocks", "group_lrs", "device"}``; ``group_lrs`` maps each trained
    block (``n`` = the head) to its learning rate at the last step.
    """
    validate_finetune(cfg)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pool = _subset(len(train), cfg.train_subset, cfg.seed)  # the training samples' indices; None: all
    num_images = len(train) if pool is None else len(pool)
    if cfg.batch_size > num_images:
        raise ConfigError(f"eval.finetune.batch_size={cfg.batch_size} is larger than the training set "
                          f"({num_images} images)")
    steps_per_epoch = num_images // cfg.batch_size  # the last partial batch is dropped
    total = cfg.epochs * steps_per_epoch
    steps = min(total, cfg.max_steps) if cfg.max_steps else total

    torch.manual_seed(cfg.seed)  # the head's initialisation
    base = fresh_copy(encoder, cfg.seed) if cfg.from_scratch else copy.deepcopy(encoder)
    model = Classifier(base, _num_features(base, _example(train)), len(train.classes)).to(device)
    groups = finetune_param_groups(model, cfg)
    peak = scaled_lr(cfg.lr, cfg.batch_size, "linear")
    lrs = warmup_cosine(peak, peak * cfg.min_lr, total, round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=peak, momentum=cfg.momentum)
    else:
        opt = torch.optim.AdamW(groups, lr=peak, betas=(cfg.momentum, 0.999))

    # Training views: random resized crop + flip, batched on the device (no colour changes).
    spec = AugmentSpec(size=train.shape[-1], crop_scale=tuple(cfg.crop_scale), hflip_p=cfg.hflip_p, jitter_p=0.0,
                       grayscale_p=0.0)
    views = ViewMaker([(spec, 1)], train.mean, train.std, is_image=train.is_image)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    step = 0
    bar = progress_bar(total=steps, desc="finetune", unit="step", disable=not progress)
    loss_value = float("nan")
    while step < steps:
        order = torch.randperm(num_images, generator=order_gen)  # a fresh order per epoch
        model.train()
        _freeze_norm_statistics(model)
        for b in range(min(steps_per_epoch, steps - step)):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            images, labels = train.batch(idx if pool is None else pool[idx])
            x = views(images.to(device), gen)[0]
            y = labels.to(device)
            for g in opt.param_groups:
                g["lr"] = float(lrs[step]) * g["lr_scale"]
            loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.update(1)
        loss_value = float(loss.detach())  # one host sync per epoch
        bar.set_postfix(loss=f"{loss_value:.4f}")
        if not math.isfinite(loss_value):
            raise RuntimeError(f"fine-tuning diverged (loss {loss_value}); lower eval.finetune.lr")
    bar.close()
    blocks = len(encoder_blocks(model.encoder))
    model.eval()
    return model, {
        "steps": step,
        "epochs": step / steps_per_epoch,
        "train_images": num_images,
        "final_loss": loss_value,
        "seconds": round(time.perf_counter() - start, 2),
        "blocks": blocks,
        "trained_blocks": blocks if cfg.train_blocks < 0 else min(cfg.train_blocks, blocks),
        "group_lrs": {g["block"]: g["lr"] for g in opt.param_groups},
        "device": device,
    }


def _settings(cfg: FinetuneConfig) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}


def _example(data: Split) -> Tensor:
    x = data.batch(range(min(2, len(data))))[0]
    return x if x.is_floating_point() else x.float() / 255
