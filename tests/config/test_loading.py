"""Typed config: recipes, overrides and one-line errors."""
import subprocess
import sys

import pytest

from selfsup.config import load_config
from selfsup.core.errors import ConfigError


def test_default_recipe_types_and_overrides():
    cfg = load_config(None, ["trainer.epochs=3", "trainer.lr=1e-2", "method.temperature=0.1", "backbone.small_stem=false"])
    assert cfg.recipe == "simclr-digits"
    assert cfg.trainer.epochs == 3 and isinstance(cfg.trainer.lr, float) and cfg.trainer.lr == 0.01
    assert cfg.method.temperature == 0.1 and cfg.backbone.small_stem is False


@pytest.mark.parametrize("override,message", [
    ("trainer.batchsize=3", "unknown config key 'trainer.batchsize' (did you mean 'trainer.batch_size'?)"),
    ("method.temprature=0.1", "did you mean 'method.temperature'?"),
    ("trainer.epochs=abc", "config key 'trainer.epochs' expects an integer, got 'abc'"),
    ("trainer.epochs=1.5", "expects an integer"),
    ("backbone.small_stem=3", "expects true/false"),
    ("trainer.precision=fp8", "must be one of fp32 | bf16 | fp16"),
    ("method.name=simclrr", "unknown method 'simclrr' for method.name (did you mean 'simclr'?)"),
    ("trainer=3", "is a section"),
    ("nokey", "is not of the form key=value"),
])
def test_bad_config_names_the_key(override, message):
    with pytest.raises(ConfigError, match=".*" + message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?").replace("|", r"\|")):
        load_config(None, [override])


def test_cli_config_error_is_one_line_exit_2():
    proc = subprocess.run([sys.executable, "-m", "selfsup", "train", "trainer.batchsize=3"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "selfsup: error: unknown config key 'trainer.batchsize' (did you mean 'trainer.batch_size'?)"
    assert "Traceback" not in proc.stderr


def test_unknown_recipe_suggests_close_name():
    with pytest.raises(ConfigError, match="did you mean 'simclr-digits'"):
        load_config("simclr-digit", [])
