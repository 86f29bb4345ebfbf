"""CIFAR-10, N epochs (default 10): one method, selfsup's recipe or LightlySSL's implementation, one JSONL row.

One invocation trains one side of one row of the table "ours vs LightlySSL" and appends one JSON line
to ``--out``; ``--table FILE`` prints the markdown table of such a file. Common protocol, both sides:
the CIFAR-10 JPEG ImageFolder (``/work/shared/data/cifar10-jpeg.zip``, unzipped), ResNet-18 with the
standard (ImageNet) stem, batch 256, ``--epochs`` N, ``--seed`` S, the same data order (selfsup's
``EpochSampler``: one seeded permutation per epoch, last partial batch dropped), the final weights
evaluated by the same call, ``selfsup.evaluate(backbone, train, val, cfg.eval, protocols=["knn",
"linear"])`` (frozen features, weighted kNN k=20 and 200, linear probe), normalised with the training
split's mean/std (LightlySSL's transforms get those statistics too, not its ImageNet defaults).

* ``--side ours``: ``selfsup train <method>-cifar10 data.name=imagefolder ... backbone.small_stem=false
  trainer.batch_size=256 trainer.epochs=N trainer.seed=S <shortening> eval.at_end=false eval.online=false``
  through ``selfsup.train`` (online monitoring off: the other side has none, and it costs time).
* ``--side random`` (no METHOD): no training; torchvision's randomly initialised ``resnet18`` (BN weights 1,
  the stronger of the two random baselines) evaluated the same way: the bar "did pretraining help?".
* ``--side lightly``: LightlySSL's losses, heads, transforms (32 px, blur off, as its CIFAR-10
  benchmark) and momentum updates with the hyper-parameters of its CIFAR-10 benchmark
  (lightly-ai/lightly ``docs/source/getting_started/benchmarks/cifar10_benchmark.py``; VICReg, absent
  there, from ``imagenette_benchmark.py``) on torchvision's ``resnet18`` without ``fc`` (what its
  ImageNet benchmarks and examples use; the CIFAR-10 script's ``ResNetGenerator`` has a CIFAR stem).
  Its lr schedule is stepped per step (its ImageNet benchmarks' interval), not per epoch.

Schedule shortening (the same rule on both sides): every schedule length counted in epochs keeps its
fraction of the run, i.e. is multiplied by N / (the recipe's or benchmark's epochs). Ours: the recipe's
``trainer.warmup_epochs`` and every ``method.*_epochs`` (DINO's teacher-temperature warm-up and
last-layer freeze) x N / recipe ``trainer.epochs`` (200 -> x0.05: 10 warm-up epochs become 0.5).
LightlySSL: its cosine schedules already span the run; VICReg's 20 warm-up epochs of 200 become N/10;
DINO's teacher temperature is constant (0.04 -> 0.04), so there is nothing to scale.

Run from the repository root (needs the ``bench`` extra: ``pip install -e '.[bench]'``)::

    python eval/scripts/cifar10_vs_lightly.py byol --side ours --seed 0
    python eval/scripts/cifar10_vs_lightly.py byol --side lightly --seed 0
    python eval/scripts/cifar10_vs_lightly.py --table eval/results/cifar10-vs-lightly-cpu-DATE.jsonl

Tiny mode (CI): ``--limit-images 64 --epochs 1 --batch-size 16 --workers 0`` on any ImageFolder.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import math
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_lightly.py, the script beside this one
from bench_lightly import torchvision_resnet18  # noqa: E402

METHODS = ("simclr", "dcl", "dclw", "moco", "byol", "simsiam", "barlowtwins", "vicreg", "dino")  # both sides
OURS_ONLY = ("swav", "nnclr", "supcon", "siamese")  # --side ours only (ResNet recipes; LightlySSL's not wired here)
LIGHTLY_REPO = "lightly-ai/lightly@e8d317fc"  # the commit read for the hyper-parameters below (2026-08-21)
CIFAR = f"{LIGHTLY_REPO} docs/source/getting_started/benchmarks/cifar10_benchmark.py"
IMAGENETTE = f"{LIGHTLY_REPO} docs/source/getting_started/benchmarks/imagenette_benchmark.py"


# ----------------------------------------------------------------------------- LightlySSL, per method


@dataclasses.dataclass
class LightlyMethod:
    """One method as LightlySSL's benchmark builds it. ``modules``: ``backbone``, heads, and ``teacher_*``
    momentum copies (not optimised); ``step(m, views, epoch) -> loss``; ``optim``: optimiser and schedule."""

    transform: Callable
    modules: nn.ModuleDict
    criterion: nn.Module
    step: Callable
    optim: dict
    hparams: dict


def _embed(backbone: nn.Module, head: nn.Module, x: Tensor) -> Tensor:
    return head(backbone(x).flatten(start_dim=1))


def _teacher(modules: nn.ModuleDict, *names: str, **built: nn.Module) -> nn.ModuleDict:
    """Add ``teacher_<name>``: a frozen copy of each named module, or the module given as ``name=``
    (DINO's weight-normed head cannot be deep-copied; the benchmark builds its teacher head anew)."""
    from lightly.models.utils import deactivate_requires_grad

    for name in names:
        modules[f"teacher_{name}"] = built[name] if name in built else copy.deepcopy(modules[name])
        deactivate_requires_grad(modules[f"teacher_{name}"])
    return modules


def _ema(m: nn.ModuleDict, momentum: float) -> None:
    from lightly.models.utils import update_momentum

    update_momentum(m["backbone"], m["teacher_backbone"], m=momentum)
    update_momentum(m["head"], m["teacher_head"], m=momentum)


def _pair_step(crit):  # SimCLR, DCL, DCLW, Barlow Twins, VICReg: one backbone call per view
    return lambda m, views, epoch: crit(*(_embed(m["backbone"], m["head"], v) for v in views[:2]))


def _byol_step(crit, momentum):
    def step(m, views, epoch):
        _ema(m, momentum)
        p0, p1 = (m["predictor"](_embed(m["backbone"], m["head"], v)) for v in views)
        z0, z1 = (_embed(m["teacher_backbone"], m["teacher_head"], v).detach() for v in views)
        return 0.5 * (crit(p0, z1) + crit(p1, z0))
    return step


def _simsiam_step(crit):
    def step(m, views, epoch):
        z0, z1 = (_embed(m["backbone"], m["head"], v) for v in views)
        return 0.5 * (crit(z0.detach(), m["predictor"](z1)) + crit(z1.detach(), m["predictor"](z0)))
    return step


def _moco_step(crit, momentum):
    from lightly.models.utils import batch_shuffle, batch_unshuffle

    def one_way(m, query, key):
        key, shuffle = batch_shuffle(key)  # shuffle BN: keys meet other split-BN groups than queries
        k = batch_unshuffle(_embed(m["teacher_backbone"], m["teacher_head"], key), shuffle)
        return crit(_embed(m["backbone"], m["head"], query), k)

    def step(m, views, epoch):  # symmetric, as the benchmark
        _ema(m, momentum)
        return 0.5 * (one_way(m, views[0], views[1]) + one_way(m, views[1], views[0]))
    return step


def _dino_step(crit, momentum):
    def step(m, views, epoch):
        _ema(m, momentum)
        teacher = [_embed(m["teacher_backbone"], m["teacher_head"], v) for v in views[:2]]
        return crit(teacher, [_embed(m["backbone"], m["head"], v) for v in views], epoch=epoch)
    return step


def _split_bn(module: nn.Module, splits: int) -> nn.Module:
    """Every BatchNorm2d -> LightlySSL's SplitBatchNorm (what ``ResNetGenerator(num_splits=8)`` has)."""
    from lightly.models.batchnorm import SplitBatchNorm

    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, SplitBatchNorm(child.num_features, splits))
        else:
            _split_bn(child, splits)
    return module


def _sgd(batch: int, lr128: float = 0.06, scale: bool = True) -> dict:
    """The CIFAR-10 benchmark's optimiser: SGD lr 0.06 x batch/128, momentum 0.9, wd 5e-4, cosine to 0."""
    return {"name": "sgd", "lr": lr128 * (batch / 128 if scale else 1.0), "momentum": 0.9,
            "weight_decay": 5e-4, "warmup_epochs": 0.0, "end_value": 0.0, "source_epochs": 200}


def build_lightly(method: str, size: int, normalize: dict, batch: int) -> LightlyMethod:
    """LightlySSL's ``method`` with its benchmark's settings at ``size`` px (sources: module constants)."""
    import lightly.loss as L
    import lightly.transforms as T
    from lightly.models.modules import heads as H

    simclr_t = dict(input_size=size, cj_strength=0.5, gaussian_blur=0.0, normalize=normalize)
    byol_t = T.BYOLTransform(view_1_transform=T.BYOLView1Transform(input_size=size, gaussian_blur=0.0, normalize=normalize),
                             view_2_transform=T.BYOLView2Transform(input_size=size, gaussian_blur=0.0, normalize=normalize))
    two_layer = lambda out, bn: H.ProjectionHead([(512, 2048, nn.BatchNorm1d(2048), nn.ReLU(inplace=True)),  # noqa: E731
                                                  (2048, out, nn.BatchNorm1d(out) if bn else None, None)])
    backbone = torchvision_resnet18()
    mods = lambda **kw: nn.ModuleDict({"backbone": backbone, **kw})  # noqa: E731
    if method in ("simclr", "dcl", "dclw"):
        crit = {"simclr": L.NTXentLoss(), "dcl": L.DCLLoss(), "dclw": L.DCLWLoss()}[method]  # t 0.5 / 0.1 / 0.1
        return LightlyMethod(T.SimCLRTransform(**simclr_t), mods(head=H.SimCLRProjectionHead(512, 512, 128)), crit,
                             _pair_step(crit), _sgd(batch), {"transform": "SimCLRTransform(cj_strength=0.5, blur 0)",
                             "head": "SimCLRProjectionHead(512, 512, 128)", "loss": f"{type(crit).__name__}(temperature={crit.temperature})",
                             "source": CIFAR})
    if method == "moco":
        crit = L.NTXentLoss(temperature=0.1, memory_bank_size=(4096, 128))  # lightly>=1.6 wants (size, dim)
        _split_bn(backbone, 8)  # before the key encoder is copied from it
        m = _teacher(mods(head=H.MoCoProjectionHead(512, 512, 128)), "backbone", "head")
        return LightlyMethod(T.SimCLRTransform(**simclr_t), m, crit, _moco_step(crit, 0.99), _sgd(batch),
                             {"transform": "SimCLRTransform(cj_strength=0.5, blur 0)", "head": "MoCoProjectionHead(512, 512, 128)",
                              "loss": "NTXentLoss(temperature=0.1, memory_bank_size=4096), symmetric",
                              "momentum_encoder": 0.99, "split_bn": 8, "source": CIFAR + " (MocoModel)"})
    if method == "byol":
        crit = L.NegativeCosineSimilarity()
        m = _teacher(mods(head=H.BYOLProjectionHead(512, 1024, 256), predictor=H.BYOLPredictionHead(256, 1024, 256)),
                     "backbone", "head")
        return LightlyMethod(byol_t, m, crit, _byol_step(crit, 0.99), _sgd(batch),
                             {"transform": "BYOLTransform(blur 0)", "head": "BYOLProjectionHead(512, 1024, 256)",
                              "predictor": "BYOLPredictionHead(256, 1024, 256)", "momentum_encoder": 0.99, "source": CIFAR})
    if method == "simsiam":
        crit = L.NegativeCosineSimilarity()
        m = mods(head=two_layer(2048, True), predictor=H.SimSiamPredictionHead(2048, 512, 2048))
        return LightlyMethod(T.SimSiamTransform(input_size=size, gaussian_blur=0.0, normalize=normalize), m, crit,
                             _simsiam_step(crit), _sgd(batch, scale=False),  # "no lr-scaling" in the benchmark
                             {"transform": "SimSiamTransform(blur 0)", "head": "ProjectionHead 512-2048(BN)-2048(BN)",
                              "predictor": "SimSiamPredictionHead(2048, 512, 2048)", "source": CIFAR})
    if method == "barlowtwins":
        crit = L.BarlowTwinsLoss()  # lambda 5e-3
        return LightlyMethod(byol_t, mods(head=two_layer(2048, False)), crit, _pair_step(crit), _sgd(batch),
                             {"transform": "BYOLTransform(blur 0)", "head": "ProjectionHead 512-2048(BN)-2048",
                              "loss": "BarlowTwinsLoss(lambda_param=5e-3)", "source": CIFAR})
    if method == "vicreg":  # not in the CIFAR-10 benchmark: its Imagenette one (ResNet-18, torchvision)
        crit = L.VICRegLoss()  # 25 / 25 / 1
        optim = {"name": "lars", "lr": 0.3 * batch / 256, "momentum": 0.9, "weight_decay": 1e-4,
                 "warmup_epochs": 20.0, "end_value": 0.001, "source_epochs": 200}
        return LightlyMethod(T.VICRegTransform(input_size=size, cj_strength=0.5, gaussian_blur=0.0, normalize=normalize),
                             mods(head=H.BarlowTwinsProjectionHead(512, 2048, 2048)), crit, _pair_step(crit), optim,
                             {"transform": "VICRegTransform(cj_strength=0.5, blur 0 at 32 px as the CIFAR-10 benchmark)",
                              "head": "BarlowTwinsProjectionHead(512, 2048, 2048)", "loss": "VICRegLoss(25, 25, 1)",
                              "source": IMAGENETTE + " (VICRegModel)"})
    if method == "dino":
        crit = L.DINOLoss(output_dim=2048)  # student 0.1, teacher 0.04 (constant), centre momentum 0.9
        def dino_head():  # 2 MLP layers "for cifar10"
            head = H.DINOProjectionHead(512, 2048, 256, 2048, batch_norm=True)
            head.layers = H.ProjectionHead([(512, 2048, nn.BatchNorm1d(2048), nn.GELU()), (2048, 256, None, None)]).layers
            return head
        transform = T.DINOTransform(global_crop_size=size, n_local_views=0, cj_strength=0.5, gaussian_blur=(0, 0, 0),
                                    normalize=normalize)
        return LightlyMethod(transform, _teacher(mods(head=dino_head()), "backbone", "head", head=dino_head()), crit, _dino_step(crit, 0.99),
                             _sgd(batch), {"transform": "DINOTransform(2 global crops at 32 px, scale 0.4-1, no local crops, "
                             "cj_strength=0.5, blur 0)", "head": "DINOProjectionHead(512, 2048, 256, 2048, BN), 2 MLP layers; teacher head built anew",
                             "loss": "DINOLoss(output_dim=2048, teacher_temp=0.04, student_temp=0.1)",
                             "momentum_encoder": 0.99, "source": CIFAR + " (DINOModel)"})
    raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")


def train_lightly(args, cfg, train_data) -> dict:
    """LightlySSL's method for ``cfg.trainer.epochs`` on ``args.train``; returns the row's training part."""
    import torchvision
    from lightly.utils.lars import LARS
    from lightly.utils.scheduler import CosineWarmupScheduler
    from selfsup.engine.trainer import EpochSampler

    t = cfg.trainer
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(t.seed)  # initialisation
    lm = build_lightly(args.method, args.image_size or 32, {"mean": list(train_data.mean), "std": list(train_data.std)},
                       t.batch_size)
    lm.modules.to(device).train()
    lm.criterion.to(device)
    dataset = torchvision.datasets.ImageFolder(args.train, transform=lm.transform)
    if dataset.targets != train_data.labels.tolist():  # index i must be the same image on both sides
        raise SystemExit(f"cifar10_vs_lightly: torchvision's ImageFolder orders {args.train} differently from selfsup's")
    sampler = EpochSampler(len(dataset), t.batch_size, t.seed)
    total = t.epochs * sampler.steps_per_epoch
    batches = [sampler.indices(s, 0, 1).tolist() for s in range(total)]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=args.workers,
                                         pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(t.seed))
    o = lm.optim
    params = [p for name, mod in lm.modules.items() if not name.startswith("teacher_") for p in mod.parameters()]
    opt_cls = LARS if o["name"] == "lars" else torch.optim.SGD
    optimizer = opt_cls(params, lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"])
    warmup_epochs = o["warmup_epochs"] * t.epochs / o["source_epochs"]  # the shortening rule
    warmup = int(round(warmup_epochs * sampler.steps_per_epoch))
    scheduler = CosineWarmupScheduler(optimizer, warmup, total, end_value=o["end_value"])
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.precision)
    losses, start = [], time.perf_counter()
    for step, (views, _) in enumerate(loader):
        views = [v.to(device, non_blocking=True) for v in views]
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            loss = lm.step(lm.modules, views, step // sampler.steps_per_epoch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        losses.append(loss.detach())
        if (step + 1) % args.log_every == 0 or step + 1 == total:
            print(f"lightly {args.method} step {step + 1}/{total} loss {torch.stack(losses[-args.log_every:]).mean():.4f} "
                  f"lr {optimizer.param_groups[0]['lr']:.4g}", flush=True)
    seconds = time.perf_counter() - start
    curve = torch.stack(losses).float().cpu().tolist()
    lm.modules.eval()
    hp = {**lm.hparams, "optimizer": o["name"], "lr": o["lr"], "momentum": o["momentum"], "weight_decay": o["weight_decay"],
          "lr_schedule": f"cosine to {o['end_value']} x lr per step", "warmup_epochs": warmup_epochs,
          "warmup_rule": f"{o['warmup_epochs']} x {t.epochs}/{o['source_epochs']}",
          "backbone": "torchvision resnet18, fc removed", "lightly": _version("lightly")}
    return {"train_seconds": seconds, "losses": curve, "hparams": hp, "encoder": lm.modules["backbone"]}


# ----------------------------------------------------------------------------- selfsup


def shortening(recipe: str, epochs: int) -> list[str]:
    """The overrides of the shortening rule: each epoch-counted schedule length x epochs / recipe epochs."""
    from selfsup import load_config

    base = load_config(recipe)
    factor = epochs / base.trainer.epochs
    out = [f"trainer.warmup_epochs={base.trainer.warmup_epochs * factor:g}"]
    for f in dataclasses.fields(base.method):
        if f.name.endswith("_epochs"):
            out.append(f"method.{f.name}={getattr(base.method, f.name) * factor:g}")
    return out


def train_ours(args, overrides: list[str]) -> dict:
    """``selfsup train`` (public API) with ``overrides``; returns the row's training part."""
    from selfsup import load_config, load_encoder, train
    from selfsup.config import config_to_dict

    cfg = load_config(args.recipe, overrides)
    start = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (Path(cfg.run.dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if isinstance(r.get("loss"), (int, float))]
    m, tc = config_to_dict(cfg)["method"], cfg.trainer
    hp = {**m, "optimizer": tc.optimizer, "lr_per_256": tc.lr, "lr_scaling": tc.lr_scaling, "weight_decay": tc.weight_decay,
          "warmup_epochs": tc.warmup_epochs, "backbone": "timm resnet18 (selfsup.create_backbone), standard stem",
          "recipe": args.recipe, "run_dir": cfg.run.dir}
    return {"train_seconds": rows[-1]["time_s"] if rows else wall,
            "wall_seconds": wall, "losses": [r["loss"] for r in rows], "hparams": hp,
            "encoder": load_encoder(Path(cfg.run.dir) / "encoder")}


# ----------------------------------------------------------------------------- driver


def limited_folder(root: str, limit: int, work: Path) -> str:
    """An ImageFolder of the first ``limit`` images of ``root``, taken round-robin over its classes (symlinks)."""
    classes = sorted(d.name for d in Path(root).iterdir() if d.is_dir())
    files = {c: sorted(p for p in (Path(root) / c).iterdir() if p.is_file()) for c in classes}
    picked = [files[c][i] for i in range(max(map(len, files.values()))) for c in classes if i < len(files[c])][:limit]
    out = work / Path(root).name
    for src in picked:
        (out / src.parent.name).mkdir(parents=True, exist_ok=True)
        (out / src.parent.name / src.name).symlink_to(src.resolve())
    return str(out)


def run(args) -> dict:
    from selfsup import evaluate, load_config, open_split

    if args.limit_images:
        work = Path(tempfile.mkdtemp(prefix="cifar10-vs-lightly-"))
        args.train, args.val = (limited_folder(p, args.limit_images, work / n) for n, p in
                                (("train", args.train), ("val", args.val)))
    args.recipe = f"{args.method if args.side != 'random' else 'simclr'}-cifar10"  # random: any recipe's data/eval
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = args.run_dir or f"runs/cifar10-vs-lightly/{args.method}-s{args.seed}-{args.epochs}ep-{stamp}"
    common = ["data.name=imagefolder", f"data.train={args.train}", f"data.val={args.val}", "backbone.name=resnet18",
              "backbone.small_stem=false", f"trainer.batch_size={args.batch_size}", f"trainer.epochs={args.epochs}",
              f"trainer.seed={args.seed}", *([f"data.image_size={args.image_size}"] if args.image_size else [])]
    short = shortening(args.recipe, args.epochs)
    extra = ["eval.at_end=false", "eval.online=false", "run.plots=false", "run.tensorboard=false",
             f"trainer.log_every={args.log_every}", f"run.dir={run_dir}", *args.overrides]
    print(f"schedule shortening (x {args.epochs}/recipe epochs): ours {' '.join(short)}", flush=True)
    cfg = load_config(args.recipe, common + short + extra)
    train_data = open_split(cfg.data, "train", seed=args.seed)
    if args.side == "ours":
        result = train_ours(args, common + short + extra)
        command = "selfsup train " + " ".join(shlex.quote(a) for a in [args.recipe, *common, *short, *extra])
    elif args.side == "lightly":
        result = train_lightly(args, cfg, train_data)
        command = None
    else:  # the untrained network both sides start from, torchvision's init (the stronger random baseline)
        torch.manual_seed(args.seed)
        result = {"encoder": torchvision_resnet18(), "losses": [], "train_seconds": 0.0,
                  "hparams": {"init": "torchvision resnet18(): kaiming-normal convs, BN weight 1, no zero-init residual",
                              "warmup_rule": "-"}}
        command = None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    evals = evaluate(result.pop("encoder"), train_data, open_split(cfg.data, "val", seed=args.seed), cfg.eval,
                     protocols=["knn", "linear"], device=device)
    losses = result.pop("losses")
    steps = args.epochs * (len(train_data) // args.batch_size) if args.side != "random" else 0  # EpochSampler's steps
    finite = all(math.isfinite(x) for x in losses)
    return {"method": args.method or "random", "side": args.side, "seed": args.seed, "epochs": args.epochs,
            "batch_size": args.batch_size, "steps": steps, "train_seconds": result["train_seconds"],
            "wall_seconds": result.get("wall_seconds"),
            "images_per_s": steps * args.batch_size / result["train_seconds"] if steps else None,
            **{k: evals.get(k, {}).get("top1") for k in ("knn_k20", "knn_k200", "linear")},  # None: k > training images
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None, "loss_finite": finite,
            "shortening": short if args.side == "ours" else result["hparams"]["warmup_rule"],
            "hparams": result["hparams"], "device": device, "torch": torch.__version__,
            "date": datetime.date.today().isoformat(),
            "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]), "selfsup_command": command}


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _mean_percent(values) -> float | None:
    values = list(values)
    return None if not values or None in values else statistics.mean(values) * 100


def _fmt(value: float | None, sign: str) -> str:
    return "-" if value is None else f"{value:{sign}.1f}"


def table(path: str) -> str:
    """Markdown: per method, the mean over seeds of kNN k=20 / k=200 / linear top-1 (%) for each side."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    keys = ("knn_k20", "knn_k200", "linear")
    out = ["| method | ours k20 / k200 / linear | LightlySSL k20 / k200 / linear | seeds (ours; LightlySSL) | "
           "gap k200 / linear (points) |", "|---|---|---|---|---|"]
    random_rows = [r for r in rows if r["side"] == "random"]
    if random_rows:
        mean = {k: _mean_percent(r.get(k) for r in random_rows) for k in keys}
        out.append(f"| random init (torchvision), no training | {' / '.join(_fmt(mean[k], '') for k in keys)} | "
                   f"(the same network) | {','.join(str(r['seed']) for r in random_rows)} | - |")
    for method in [m for m in METHODS + OURS_ONLY if any(r["method"] == m for r in rows)]:
        side = {s: [r for r in rows if r["method"] == method and r["side"] == s] for s in ("ours", "lightly")}
        mean = {s: {k: _mean_percent(r.get(k) for r in rs) for k in keys} for s, rs in side.items() if rs}
        cell = lambda s: " / ".join(_fmt(mean[s][k], "") for k in keys) if s in mean else "-"  # noqa: E731
        seeds = "; ".join(",".join(str(r["seed"]) for r in side[s]) or "-" for s in ("ours", "lightly"))
        gap = (" / ".join(_fmt(None if None in (mean["ours"][k], mean["lightly"][k]) else mean["ours"][k] - mean["lightly"][k], "+")
                          for k in keys[1:]) if len(mean) == 2 else "-")
        out.append(f"| {method} | {cell('ours')} | {cell('lightly')} | {seeds} | {gap} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("method", nargs="?", choices=METHODS + OURS_ONLY)
    p.add_argument("--side", choices=("ours", "lightly", "random"),
                   help="random: no training, torchvision's randomly initialised resnet18 (no METHOD)")
    p.add_argument("--table", metavar="JSONL", help="print the markdown table of a results file and exit")
    p.add_argument("--train", default="/tmp/cifar10-jpeg/train")
    p.add_argument("--val", default="/tmp/cifar10-jpeg/test")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=None, help="resize on load (ours) / crop size (LightlySSL); default 32")
    p.add_argument("--limit-images", type=int, default=0,
                   help="tiny mode: only this many train and val images (>= 5 per class: the linear probe holds out 10%%)")
    p.add_argument("--workers", type=int, default=cores, help="LightlySSL DataLoader workers (default: cores)")
    p.add_argument("--log-every", type=int, default=20, help="steps per logged loss, both sides (the recipes' 20)")
    p.add_argument("--run-dir", default=None, help="ours: the run directory (default runs/cifar10-vs-lightly/...)")
    p.add_argument("--out", default=f"eval/results/cifar10-vs-lightly-cpu-{datetime.date.today().isoformat()}.jsonl")
    p.add_argument("overrides", nargs="*", help="extra selfsup overrides for --side ours (trainer.precision=bf16 ...)")
    args = p.parse_args(argv)
    if args.table:
        print(table(args.table))
        return 0
    if args.side == "random" and args.method:
        p.error("--side random evaluates the untrained network: give no METHOD")
    if args.side != "random" and (not args.method or not args.side):
        p.error("give a METHOD and --side ours|lightly, or --side random (or --table FILE)")
    if args.side == "lightly" and args.method in OURS_ONLY:
        p.error(f"{args.method}: only --side ours (LightlySSL's side covers {', '.join(METHODS)})")
    if args.side in ("lightly", "random") and args.overrides:
        p.error("config overrides apply to --side ours only")
    try:
        import lightly  # noqa: F401
    except ImportError:
        print("cifar10_vs_lightly: LightlySSL is not installed: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    for split in (args.train, args.val):
        if not Path(split).is_dir():
            print(f"cifar10_vs_lightly: {split} is not a folder; unzip /work/shared/data/cifar10-jpeg.zip "
                  "to /tmp/cifar10-jpeg (see /work/shared/data/README.md)", file=sys.stderr)
            return 2
    row = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
