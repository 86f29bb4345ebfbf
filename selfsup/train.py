"""``selfsup train``: config -> data -> backbone -> method -> trainer -> export -> evaluation."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from accelerate import Accelerator

from selfsup.backbones import create_backbone, default_model_args, is_sequence_backbone
from selfsup.config import Config, config_to_dict, save_config, validate_config, validate_paths
from selfsup.data import ImageDataset, load_dataset
from selfsup.data.streaming import StreamingImageFolder, is_streaming, open_split
from selfsup.distributed import broadcast_module_state
from selfsup.errors import ConfigError
from selfsup.evaluation.protocols import evaluate, evaluation_features, format_table
from selfsup.export import export_encoder
from selfsup.methods import METHODS, create_method
from selfsup.methods.base import Method
from selfsup.summary import finish_run
from selfsup.trainer import Trainer


def run_dir_of(cfg: Config) -> Path:
    """``run.dir``, or ``runs/<recipe>``: a stable default, so rerunning a command resumes it."""
    return Path(cfg.run.dir or Path("runs") / (cfg.recipe or cfg.method.name))


def load_split(cfg: Config, split: str) -> ImageDataset | StreamingImageFolder:
    """One split: in memory, or (a large imagefolder split, or ``data.streaming=always``) read on demand."""
    d = cfg.data
    streamed = open_split(d, split, seed=cfg.trainer.seed)
    if streamed is not None:
        return streamed
    return load_dataset(d.name, split, root=d.root, train_path=d.train, val_path=d.val, image_size=d.image_size,
                        download=d.download, cache_dir=d.cache_dir, num_samples=d.num_samples,
                        num_classes=d.num_classes, seed=cfg.trainer.seed, on_bad_file=d.on_bad_file)


def build_method(cfg: Config, data: ImageDataset) -> Method:
    """The method around a freshly initialised backbone (initialisation seeded by ``trainer.seed``)."""
    _check_non_image_data(cfg, data)
    torch.manual_seed(cfg.trainer.seed)
    channels, size = data.shape[0], data.shape[-1]
    model_args = {**default_model_args(cfg.backbone.name, tuple(data.shape[-2:])), **cfg.backbone.model_args}
    backbone = create_backbone(cfg.backbone.name, small_stem=cfg.backbone.small_stem,
                               pretrained=cfg.backbone.pretrained, in_chans=channels, **model_args)
    return create_method(cfg.method, backbone, image_size=size, num_classes=len(data.classes))


def _check_non_image_data(cfg: Config, data: ImageDataset) -> None:
    """Float data (sequences) are never augmented, so only label-trained methods make sense on them;
    NaN padding (variable lengths) needs a backbone that reads it as lengths."""
    if is_streaming(data) or not data.images.is_floating_point():  # streamed data are uint8 images
        return
    if not METHODS.get(cfg.method.name).uses_labels:
        raise ConfigError(f"data.name={cfg.data.name} holds non-image data, which gets no augmentation: "
                          f"method.name={cfg.method.name} cannot learn from it; use method.name=supervised")
    if not is_sequence_backbone(cfg.backbone.name) and bool(torch.isnan(data.images).any()):
        raise ConfigError(f"variable-length sequences (padding) need a sequence backbone (lstm, gru, seq_transformer), "
                          f"not backbone.name={cfg.backbone.name}")


def make_accelerator(cfg: Config) -> Accelerator:
    if cfg.trainer.precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("trainer.precision=fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
    # Launched processes (torchrun / accelerate launch) on a machine without an accelerator: CPU
    # processes over gloo. Accelerate picks MULTI_CPU only when told cpu=True; otherwise every
    # process would train alone on the whole job (and they would all write the run directory).
    cpu = not _has_accelerator() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(mixed_precision={"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[cfg.trainer.precision], cpu=cpu)


def _has_accelerator() -> bool:
    probe = getattr(torch, "accelerator", None)  # torch >= 2.6: CUDA, XPU, MPS, ...
    return bool(probe.is_available()) if probe is not None else torch.cuda.is_available()


def train(cfg: Config) -> dict:
    """Train, export ``encoder/``, evaluate, plot, summarise; returns the evaluation results (empty if disabled)."""
    run_dir = run_dir_of(cfg)
    validate_config(cfg)  # again: a Config built in Python skipped the checks of loading
    validate_paths(cfg, run_dir)  # before anything is decoded or trained
    acc = make_accelerator(cfg)
    with acc.main_process_first():  # rank 0 decodes and caches; the others read its cache
        train_data = load_split(cfg, "train")
    if is_streaming(train_data):
        acc.print(train_data.describe())
    method = build_method(cfg, train_data)
    trainer = Trainer(cfg, method, train_data, run_dir, acc)
    trainer.resume()  # an incompatible checkpoint is refused before the run directory changes
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    acc.print(f"run directory: {run_dir}  |  {trainer.total_steps} steps of {cfg.trainer.batch_size} images "
              f"({trainer.micro_batch} per process x {acc.num_processes} processes x {cfg.trainer.grad_accum} accumulation), "
              f"peak lr {trainer.schedules['lr'].max():.4g} (trainer.lr={cfg.trainer.lr:g} at batch 256, "
              f"lr_scaling={cfg.trainer.lr_scaling}, on the global batch)"
              + (f", BatchNorm {'synchronised' if trainer.sync_bn else 'per process'}" if acc.num_processes > 1 else ""))
    trainer.fit()
    results: dict = {}
    if acc.is_main_process:
        export_encoder(trainer.method.encoder, run_dir / "encoder", mean=train_data.mean, std=train_data.std,
                       input_size=tuple(train_data.shape), method=cfg.method.name,
                       recipe=config_to_dict(cfg))
    acc.wait_for_everyone()
    if cfg.eval.at_end:
        results = _evaluate_run(cfg, trainer, train_data, run_dir, acc)
    if acc.is_main_process:
        print(finish_run(run_dir, cfg, total_steps=trainer.total_steps, results=results))
    return results


def _evaluate_run(cfg: Config, trainer: Trainer, train_data: ImageDataset, run_dir: Path, acc: Accelerator) -> dict:
    """kNN / linear probe on the trained encoder (plus the method's own classifier head, if any) and,
    with ``eval.random_baseline``, on a randomly initialised one; rank 0 writes eval.json
    (eval_random_init.json) and returns the results, the other ranks return ``{}``.

    One process: each encoder is evaluated in turn. Several: every rank runs the encoders on its share
    of both splits and gets all the features (each sample counted once); both encoders' features are
    extracted before any probe runs, so when rank 0 then fits the probes alone (and writes, and prints)
    no other rank is left waiting in a collective that could outlast its timeout: they return at once.
    Every extraction path shards (in-memory and streamed splits alike), so rank 0 never evaluates alone.
    """
    with acc.main_process_first():  # rank 0 decodes and caches; the others read its cache
        val_data = load_split(cfg, "val")
    shard = acc.num_processes > 1
    method = trainer.method
    if shard:  # evaluate rank 0's (exported) weights everywhere: BN statistics may be per process
        broadcast_module_state(method)
    runs = [("eval.json", method.encoder, method if hasattr(method, "classify") else None, run_dir / "features",
             run_dir / "plots" if cfg.run.plots else None)]
    if cfg.eval.random_baseline:
        random_encoder = build_method(cfg, train_data).encoder.to(acc.device)
        broadcast_module_state(random_encoder)  # the same weights on every rank, whatever the seeding did
        runs.append(("eval_random_init.json", random_encoder, None, None, None))
    extracted = [None] * len(runs)  # one process: evaluate() extracts as it goes, one encoder at a time
    if shard:
        extracted = [evaluation_features(encoder, train_data, val_data, cfg.eval, device=acc.device,
                                         classifier=classifier, cache_dir=cache_dir, shard=True)
                     for _, encoder, classifier, cache_dir, _ in runs]
        if not acc.is_main_process:
            return {}
    results = {}
    for (name, encoder, classifier, cache_dir, plots_dir), features in zip(runs, extracted):
        results[name] = evaluate(encoder, train_data, val_data, cfg.eval, device=acc.device, classifier=classifier,
                                 cache_dir=cache_dir, plots_dir=plots_dir, features=features)
        (run_dir / name).write_text(json.dumps(results[name], indent=2) + "\n")
    rows = {f"{cfg.method.name} (pretrained)": results["eval.json"]}
    if "eval_random_init.json" in results:
        rows["random init (same architecture)"] = results["eval_random_init.json"]
    print(format_table(rows))
    return results["eval.json"]

