"""``key=value`` overrides may come before or after a subcommand's options (argparse alone stops
filling a ``nargs="*"`` positional once it has read an option)."""
from __future__ import annotations

import pytest

from selfsup.cli import build_parser


@pytest.mark.parametrize("argv, expect", [
    ("eval RUN --protocol finetune eval.finetune.train_blocks=1",
     dict(path="RUN", protocol="finetune", overrides=["eval.finetune.train_blocks=1"])),
    ("eval RUN a=1 --protocol knn b=2", dict(path="RUN", protocol="knn", overrides=["a=1", "b=2"])),
    ("eval --protocol linear RUN a=1", dict(path="RUN", protocol="linear", overrides=["a=1"])),
    ("train simclr-digits a=1", dict(recipe="simclr-digits", overrides=["a=1"])),
    ("train a=1 b=2", dict(recipe="a=1", overrides=["b=2"])),  # no recipe: _config moves a=1 back to the overrides
    ("--debug train", dict(debug=True, recipe=None, overrides=[])),
    ("bench simclr-digits --steps 2 a=1 --rounds 1 b=2",
     dict(recipe="simclr-digits", steps=2, rounds=1, overrides=["a=1", "b=2"])),
    ("benchmark digits --out x.md a=1 --seeds 0 1", dict(suite="digits", out="x.md", seeds=[0, 1], overrides=["a=1"])),
    ("export RUN --out DIR --format onnx", dict(run="RUN", out="DIR", format="onnx")),
])
def test_overrides_before_and_after_options(argv, expect):
    args = vars(build_parser().parse_args(argv.split()))
    assert {k: args[k] for k in expect} == expect


@pytest.mark.parametrize("argv", ["eval RUN --bogus", "eval RUN --protocol nope", "export RUN", "frobnicate"])
def test_bad_arguments_still_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv.split())
    assert exit_.value.code == 2
