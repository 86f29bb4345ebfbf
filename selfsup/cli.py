"""Command line: ``selfsup train | eval | export | bench | plot | list`` (also ``python -m selfsup``).

User errors (bad keys, missing paths, unreadable data, unusable checkpoints) print one line and
exit with code 2; a non-finite loss exits with 3, SIGTERM / SIGINT with 128 + signal after a
checkpoint; ``--debug`` shows the traceback instead. selfsup's own warnings (skipped files,
skipped checkpoints) are one line each.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from selfsup.core import interrupt
from selfsup.core.errors import SelfsupError

EPILOG = """examples:
  selfsup train                                   # the default recipe: SimCLR on digits
  selfsup train recipes/simclr-cifar10.yaml data.name=imagefolder data.train=DIR/train data.val=DIR/test
  selfsup train simclr-digits trainer.epochs=5 trainer.batch_size=128
  selfsup eval runs/simclr-digits --protocol linear
  selfsup eval runs/simclr-digits --protocol finetune eval.finetune.epochs=10 eval.finetune.train_blocks=1
  selfsup benchmark digits                        # a packaged suite (or a path): recipes x seeds x protocols
                                                  #   -> eval/results/benchmark-digits-DATE.md
  selfsup export runs/simclr-digits --out exported/
  selfsup plot runs/simclr-digits                 # PNG curves into runs/simclr-digits/plots/
  selfsup plot exported/ --filters --features img.jpg --out pics/   # first-layer filters, feature maps
  selfsup list

exit codes: 0 done, 2 bad input (one line names it), 3 non-finite loss (the last good checkpoint
is named), 128+N stopped by signal N after writing a checkpoint (rerun to resume).
"""


class _IntermixedParser(argparse.ArgumentParser):
    """A sub-command parser that takes positionals before and after options, so that
    ``selfsup eval RUN --protocol finetune key=value`` keeps ``key=value`` as an override (plain
    argparse stops filling a ``nargs="*"`` positional once an option has been read)."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inside:  # parse_known_intermixed_args calls back in here (twice)
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfsup", description="Self-supervised representation learning for PyTorch.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_IntermixedParser)

    p = sub.add_parser("train", help="train what a recipe says; writes a run directory")
    p.add_argument("recipe", nargs="?", help="recipe path or name (default: simclr-digits)")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value (e.g. trainer.epochs=10)")

    p = sub.add_parser("eval", help="evaluate a run directory or an exported encoder; prints JSON")
    p.add_argument("path", help="run directory or exported encoder directory")
    p.add_argument("--protocol", choices=["knn", "linear", "frozen", "finetune", "all"], default="frozen",
                   help="frozen (default): knn + linear on cached features; finetune: train encoder + head "
                        "(eval.finetune.* keys); all: knn, linear and finetune")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. data.name=imagefolder data.train=... data.val=...")

    p = sub.add_parser("export", help="export a run's encoder for transfer learning")
    p.add_argument("run", help="run directory")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--format", choices=["safetensors", "torchscript", "onnx"], default="safetensors",
                   help="onnx is checked with onnxruntime when installed (pip install 'selfsup[onnx]')")

    p = sub.add_parser("bench", help="training throughput: end to end, model-only bound, their ratio")
    p.add_argument("recipe", nargs="?", help="recipe path or name (default: simclr-digits)")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    p.add_argument("--steps", type=int, default=10, help="steps per timed round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")

    p = sub.add_parser("benchmark", help="recipes x seeds -> train (or reuse) -> protocols -> markdown table")
    p.add_argument("suite", help="suite file or packaged suite name (selfsup list; selfsup/benchmarks/suites/*.yaml): "
                                 "protocol, rows (recipes), seeds, output")
    p.add_argument("overrides", nargs="*", help="config overrides for every training command, key=value")
    p.add_argument("--seeds", type=int, nargs="+", help="replace the suite's seeds")
    p.add_argument("--runs-root", help="replace the suite's runs_root (run directories: ROOT/NAME-seedS)")
    p.add_argument("--out", help="replace the suite's markdown output path ({date}: today; a .json lands beside it)")

    p = sub.add_parser("plot", help="PNG plots of a run's metrics (loss, lr, kNN, DINO teacher entropy); "
                                    "an encoder's first-layer filters and feature maps")
    p.add_argument("run", help="run directory (curves); with --filters / --features: an exported encoder or a run")
    # absent options stay out of the namespace (SUPPRESS): `selfsup plot RUN` parses as it always did
    p.add_argument("--filters", action="store_true", default=argparse.SUPPRESS,
                   help="the first layer's filters -> filters.png")
    p.add_argument("--features", metavar="IMAGE", default=argparse.SUPPRESS,
                   help="this image's feature maps per stage -> features_<i>.png")
    p.add_argument("--channels", type=int, default=argparse.SUPPRESS, help="feature maps shown per stage (default 16)")
    p.add_argument("--out", default=argparse.SUPPRESS,
                   help="output directory (default: RUN/plots; required for an exported encoder)")

    p = sub.add_parser("transfer", help="dense transfer of an exported encoder: detection or segmentation; prints JSON")
    p.add_argument("task", choices=["detection", "segmentation"])
    p.add_argument("encoder", help="exported encoder directory (or a run directory)")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. data.root=DIR train.steps=200 model.regime=frozen "
                                                "(keys: selfsup/transfer/config.py)")

    p = sub.add_parser("data", help="generate or convert datasets")
    p._inside = True  # plain parsing: argparse's intermixed parsing refuses a parser with sub-commands
    data_sub = p.add_subparsers(dest="data_command", required=True, parser_class=_IntermixedParser)
    q = data_sub.add_parser("scenes", help="generated scenes: digits on textures, COCO JSON + VOC-style PNG masks")
    q.add_argument("--out", required=True, help="output directory")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--num-train", type=int, default=64)
    q.add_argument("--num-val", type=int, default=16)
    q.add_argument("--size", type=int, default=64, help="image side in pixels (multiple of 8, >= 16)")
    q = data_sub.add_parser("shards", help="an ImageFolder as WebDataset tar shards (data.name=shards), labels kept")
    q.add_argument("imagefolder", help="folder with train/ (val/, test/) class folders, or one split's class folders")
    q.add_argument("--out", required=True, help="output directory: <split>-NNNNNN.tar and classes.json")
    q.add_argument("--shard-size", type=int, default=1000, help="samples per shard")

    sub.add_parser("list", help="methods, backbones, datasets and recipes")
    for command in sub.choices.values():  # `selfsup train --debug ...` as well as `selfsup --debug train ...`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show tracebacks instead of one-line errors")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    interrupt.started()  # Ctrl-C from here on: KeyboardInterrupt, reported below as one line
    if not args.debug:
        warnings.formatwarning = _one_line_warning
    try:
        if args.command != "list":
            from selfsup.core import threads

            threads.apply_threads()  # SELFSUP_THREADS or auto; a run's run.threads applies when its config is read
        return COMMANDS[args.command](args)
    except SelfsupError as err:
        if args.debug:
            raise
        print(f"selfsup: error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    except KeyboardInterrupt:
        print(interrupt.MESSAGE, file=sys.stderr)
        return interrupt.EXIT_CODE
    except Exception:
        if not interrupt.received() or args.debug:
            raise
        print(interrupt.MESSAGE, file=sys.stderr)  # Ctrl-C turned into a library's error (faiss: RuntimeError)
        return interrupt.EXIT_CODE


_DEFAULT_FORMAT = warnings.formatwarning
_PACKAGE_DIR = str(Path(__file__).resolve().parent)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """selfsup's warnings as ``selfsup: warning: ...``; other libraries' keep their format."""
    if str(Path(filename).resolve()).startswith(_PACKAGE_DIR):
        return f"selfsup: warning: {message}\n"
    return _DEFAULT_FORMAT(message, category, filename, lineno, line)


def _config(args):
    from selfsup.config import load_config

    recipe, overrides = args.recipe, list(args.overrides)
    if recipe and "=" in recipe:  # `selfsup train key=value ...`: the default recipe with overrides
        recipe, overrides = None, [recipe, *overrides]
    return load_config(recipe, overrides)


def _train(args) -> int:
    from selfsup.runs.train import train

    train(_config(args))
    return 0


def _bench(args) -> int:
    from selfsup.benchmarks.throughput import bench

    result = bench(_config(args), steps=args.steps, warmup=args.warmup, rounds=args.rounds)
    print(json.dumps(result))
    return 0


def _eval(args) -> int:
    from selfsup.runs.evaluate import evaluate_run

    print(json.dumps(evaluate_run(args.path, args.protocol, args.overrides)))
    return 0


def _benchmark(args) -> int:
    from selfsup.benchmarks.suites import load_suite, run_suite

    suite = load_suite(args.suite, seeds=args.seeds, runs_root=args.runs_root, out=args.out, overrides=args.overrides)
    report = run_suite(suite)
    print(json.dumps({"out": report["out"], "seconds": report["seconds"]}))
    return 0


def _export(args) -> int:
    from selfsup.runs.export import export_as
    from selfsup.runs.open_run import open_encoder

    encoder, cfg, _ = open_encoder(args.run)
    out = export_as(encoder, args.out, args.format, method=cfg.method.name, recipe=cfg)
    print(f"exported {args.format} encoder to {out}")
    return 0


def _list(args) -> int:
    import timm

    from selfsup.benchmarks.suites import PROTOCOLS_DIR, SUITES_DIR, packaged_names
    from selfsup.config import RECIPES_DIR
    from selfsup.data import DATASETS
    from selfsup.methods import METHODS
    from selfsup.models.sequence_backbones import SEQUENCE_BACKBONES

    print("methods:")
    for name in METHODS.names():
        cls = METHODS.get(name)
        print(f"  {name:<14} {cls.paper}")
    print("datasets:\n  " + ", ".join(sorted(DATASETS)))
    print(f"backbones:\n  any timm model ({len(timm.list_models())} names; `python -c \"import timm; "
          "print(timm.list_models('resnet*'))\"`), e.g. resnet18, resnet50, vit_small_patch16_224; "
          "backbone.small_stem=true for 32-px data (ResNet family)")
    print(f"  sequence models: {', '.join(SEQUENCE_BACKBONES.names())} (read rows or patches; backbone.model_args="
          "{hidden_size: 128, num_layers: 2, bidirectional: true} or {embed_dim: 128, depth: 4, positions: learned})")
    _list_compatibility({name: METHODS.get(name) for name in METHODS.names()})
    print("recipes:")
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        print(f"  {path.stem}")
    print(f"benchmark suites (selfsup benchmark NAME):\n  {', '.join(packaged_names(SUITES_DIR))}")
    print(f"benchmark protocols (a suite's protocol: NAME):\n  {', '.join(packaged_names(PROTOCOLS_DIR))}")
    return 0


def _plot(args) -> int:
    filters, image, out = getattr(args, "filters", False), getattr(args, "features", None), getattr(args, "out", None)
    if not (filters or image):
        from selfsup.core.errors import ConfigError
        from selfsup.runs.curves import plot_run

        if out or hasattr(args, "channels"):
            raise ConfigError("--out and --channels go with --filters / --features; a run's curves go to RUN/plots")
        for path in plot_run(args.run):
            print(path)
        return 0
    from selfsup.transfer.encoder_plots import plot_feature_maps, plot_filters

    if filters:
        print(plot_filters(args.run, out))
    if image:
        for path in plot_feature_maps(args.run, image, out, channels=getattr(args, "channels", 16)):
            print(path)
    return 0


def _transfer(args) -> int:
    if args.task == "detection":
        from selfsup.transfer.detection import run_detection as run
    else:
        from selfsup.transfer.segmentation import run_segmentation as run
    result = run(args.encoder, args.overrides)
    if result is not None:  # None: a process other than rank 0 of ./launch.sh transfer
        print(json.dumps(result))
    return 0


def _data(args) -> int:
    if args.data_command == "shards":
        from selfsup.data.shard_writer import write_shards

        print(json.dumps(write_shards(args.imagefolder, args.out, shard_size=args.shard_size)))
        return 0
    from selfsup.transfer.scenes import write_scenes

    print(write_scenes(args.out, seed=args.seed, num_train=args.num_train, num_val=args.num_val, size=args.size))
    return 0


def _list_compatibility(methods: dict) -> None:
    """Which backbone family works with which method and data, from what each method class declares
    (``multi_size``: the backbone also sees other input sizes; ``uses_labels``)."""
    multi_size = {name: cls.multi_size for name, cls in methods.items() if cls.multi_size}
    fixed, notes = ", ".join(multi_size), "; ".join(f"{m}: {why}" for m, why in multi_size.items())
    labelled = ", ".join(name for name, cls in methods.items() if cls.uses_labels)
    vit_only = ", ".join(name for name, cls in methods.items() if cls.needs_vit)  # they need patch tokens
    print("backbone x method:")
    print(f"  CNNs (timm)                  every method except {vit_only} (ViT only)")
    print(f"  ViT (timm)                   every method; {fixed} need backbone.model_args="
          "{dynamic_img_size: true, dynamic_img_pad: true} (positions interpolated to each input size)")
    print(f"  lstm, gru, seq_transformer   every method except {fixed} ({notes}) and {vit_only}")
    print(f"  data.name=sequence           method {labelled} only (float N x T x D data get no augmentation); "
          "variable lengths need a sequence backbone")


COMMANDS = {"train": _train, "bench": _bench, "benchmark": _benchmark, "eval": _eval, "export": _export, "plot": _plot, "list": _list,
            "transfer": _transfer, "data": _data}

if __name__ == "__main__":
    sys.exit(main())
