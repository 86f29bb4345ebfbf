"""Command line: ``selfsup train | eval | export | bench | list`` (also ``python -m selfsup``).

User errors (bad keys, missing paths, unreadable data) print one line and exit with code 2;
``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from selfsup.errors import SelfsupError

EPILOG = """examples:
  selfsup train                                   # the default recipe: SimCLR on digits
  selfsup train recipes/simclr-cifar10.yaml data.name=imagefolder data.train=DIR/train data.val=DIR/test
  selfsup train simclr-digits trainer.epochs=5 trainer.batch_size=128
  selfsup eval runs/simclr-digits --protocol linear
  selfsup export runs/simclr-digits --out exported/
  selfsup list
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfsup", description="Self-supervised representation learning for PyTorch.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train what a recipe says; writes a run directory")
    p.add_argument("recipe", nargs="?", help="recipe path or name (default: simclr-digits)")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value (e.g. trainer.epochs=10)")

    p = sub.add_parser("eval", help="evaluate a run directory or an exported encoder; prints JSON")
    p.add_argument("path", help="run directory or exported encoder directory")
    p.add_argument("--protocol", choices=["knn", "linear", "all"], default="all")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. data.name=imagefolder data.train=... data.val=...")

    p = sub.add_parser("export", help="export a run's encoder for transfer learning")
    p.add_argument("run", help="run directory")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--format", choices=["safetensors", "torchscript"], default="safetensors")

    p = sub.add_parser("bench", help="training throughput: end to end, model-only bound, their ratio")
    p.add_argument("recipe", nargs="?", help="recipe path or name (default: simclr-digits)")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    p.add_argument("--steps", type=int, default=10, help="steps per timed round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")

    sub.add_parser("list", help="methods, backbones, datasets and recipes")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SelfsupError as err:
        if args.debug:
            raise
        print(f"selfsup: error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    except KeyboardInterrupt:
        print("selfsup: interrupted", file=sys.stderr)
        return 130


def _config(args):
    from selfsup.config import load_config

    recipe, overrides = args.recipe, list(args.overrides)
    if recipe and "=" in recipe:  # `selfsup train key=value ...`: the default recipe with overrides
        recipe, overrides = None, [recipe, *overrides]
    return load_config(recipe, overrides)


def _train(args) -> int:
    from selfsup.train import train

    train(_config(args))
    return 0


def _bench(args) -> int:
    from selfsup.bench import bench

    result = bench(_config(args), steps=args.steps, warmup=args.warmup, rounds=args.rounds)
    print(json.dumps(result))
    return 0


def _eval(args) -> int:
    from selfsup.evaluation.protocols import evaluate
    from selfsup.runs import open_encoder
    from selfsup.train import load_split

    encoder, cfg, out_dir = open_encoder(args.path, args.overrides)
    protocols = ["knn", "linear"] if args.protocol == "all" else [args.protocol]
    results = evaluate(encoder, load_split(cfg, "train"), load_split(cfg, "val"), cfg.eval, protocols=protocols)
    path = Path(out_dir) / "eval.json"
    merged = json.loads(path.read_text()) if path.is_file() else {}
    merged.update(results)
    path.write_text(json.dumps(merged, indent=2) + "\n")
    print(json.dumps(results))
    return 0


def _export(args) -> int:
    from selfsup.export import export_as
    from selfsup.runs import open_encoder

    encoder, cfg, _ = open_encoder(args.run)
    out = export_as(encoder, args.out, args.format, method=cfg.method.name, recipe=cfg)
    print(f"exported {args.format} encoder to {out}")
    return 0


def _list(args) -> int:
    import timm

    from selfsup.config import RECIPES_DIR
    from selfsup.data import DATASETS
    from selfsup.methods import METHODS

    print("methods:")
    for name in METHODS.names():
        cls = METHODS.get(name)
        print(f"  {name:<14} {cls.paper}")
    print("datasets:\n  " + ", ".join(sorted(DATASETS)))
    print(f"backbones:\n  any timm model ({len(timm.list_models())} names; `python -c \"import timm; "
          "print(timm.list_models('resnet*'))\"`), e.g. resnet18, resnet50, vit_small_patch16_224; "
          "backbone.small_stem=true for 32-px data (ResNet family)")
    print("recipes:")
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        print(f"  {path.stem}")
    return 0


COMMANDS = {"train": _train, "bench": _bench, "eval": _eval, "export": _export, "list": _list}

if __name__ == "__main__":
    sys.exit(main())
