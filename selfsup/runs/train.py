"""``selfsup train``: config -> data -> backbone -> method -> trainer -> export -> evaluation."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from accelerate import Accelerator

from selfsup.models.backbones import create_backbone, default_model_args, is_sequence_backbone, reset_to_torch_defaults
from selfsup.config import Config, config_to_dict, save_config, validate_config, validate_paths
from selfsup.data import Split, open_split
from selfsup.core.distributed import broadcast_module_state
from selfsup.core.errors import ConfigError
from selfsup.core.threads import apply_threads, describe_threads
from selfsup.evaluation.protocols import evaluate, evaluation_features, format_table
from selfsup.runs.export import export_encoder
from selfsup.methods import METHODS, create_method
from selfsup.methods.base import Method
from selfsup.runs.summary import RANDOM_BASELINES, finish_run
from selfsup.engine.build import build_method, make_accelerator
from selfsup.engine.trainer import Trainer


def run_dir_of(cfg: Config) -> Path:
    """``run.dir``, or ``runs/<recipe>``: a stable default, so rerunning a command resumes it."""
    return Path(cfg.run.dir or Path("runs") / (cfg.recipe or cfg.method.name))


def train(cfg: Config) -> dict:
    """Train, export ``encoder/``, evaluate, plot, summarise; returns the evaluation results (empty if disabled)."""
    run_dir = run_dir_of(cfg)
    validate_config(cfg)  # again: a Config built in Python skipped the checks of loading
    validate_paths(cfg, run_dir)  # before anything is decoded or trained
    apply_threads(cfg.run.threads)
    acc = make_accelerator(cfg, run_dir)  # with run.log_with's trackers
    with acc.main_process_first():  # rank 0 decodes and caches; the others read its cache
        train_data = open_split(cfg.data, "train", seed=cfg.trainer.seed)
    acc.print(train_data.describe())
    acc.print(describe_threads())
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
        results = _evaluate_at_end(cfg, trainer, train_data, run_dir, acc)
    if acc.is_main_process:
        print(finish_run(run_dir, cfg, total_steps=trainer.total_steps, results=results))
    return results


def _evaluate_at_end(cfg: Config, trainer: Trainer, train_data: Split, run_dir: Path, acc: Accelerator) -> dict:
    """kNN / linear probe on the trained encoder (plus the method's own classifier head, if any) and,
    with ``eval.random_baseline``, on two randomly initialised copies of its architecture (timm's own init and
    PyTorch's ``reset_parameters()``: :data:`~selfsup.runs.summary.RANDOM_BASELINES`); rank 0 writes eval.json
    (and the baselines' files) and returns the pretrained encoder's results, the other ranks return ``{}``.

    One process: each encoder is evaluated in turn. Several: every rank runs the encoders on its share
    of both splits and gets all the features (each sample counted once); both encoders' features are
    extracted before any probe runs, so when rank 0 then fits the probes alone (and writes, and prints)
    no other rank is left waiting in a collective that could outlast its timeout: they return at once.
    Every extraction path shards (in-memory and streamed splits alike), so rank 0 never evaluates alone.
    """
    with acc.main_process_first():  # rank 0 decodes and caches; the others read its cache
        val_data = open_split(cfg.data, "val", seed=cfg.trainer.seed)
    shard = acc.num_processes > 1
    method = trainer.method
    if shard:  # evaluate rank 0's (exported) weights everywhere: BN statistics may be per process
        broadcast_module_state(method)
    runs = [("eval.json", method.encoder, method if hasattr(method, "classify") else None, run_dir / "features",
             run_dir / "plots" if cfg.run.plots else None)]
    if cfg.eval.random_baseline:
        for key, (file, _) in RANDOM_BASELINES.items():
            random_encoder = random_init_encoder(cfg, train_data, key).to(acc.device)
            broadcast_module_state(random_encoder)  # the same weights on every rank, whatever the seeding did
            runs.append((file, random_encoder, None, None, None))
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
    rows.update({label: results[file] for file, label in RANDOM_BASELINES.values() if file in results})
    print(format_table(rows))
    return results["eval.json"]


def random_init_encoder(cfg: Config, data: Split, init: str) -> torch.nn.Module:
    """A randomly initialised encoder of the run's architecture (seeded by ``trainer.seed``): ``init`` is
    ``timm_init`` (as the backbone factory builds it) or ``torch_default_init`` (then PyTorch's
    ``reset_parameters()`` on every module)."""
    encoder = build_method(cfg, data, init_weights=False).encoder  # random, even with backbone.init_from
    if init == "torch_default_init":
        torch.manual_seed(cfg.trainer.seed)
        reset_to_torch_defaults(encoder)
    elif init != "timm_init":
        raise ValueError(f"unknown random init {init!r}; known: {sorted(RANDOM_BASELINES)}")
    return encoder
