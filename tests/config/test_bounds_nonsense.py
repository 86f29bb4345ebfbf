"""Values that train nonsense are refused when the config loads (issue 16, point 8): a head width or depth
of 0 (a constant loss), a learning rate of 0, a one-permutation jigsaw task; each a one-line error, exit 2."""
from __future__ import annotations

import dataclasses

import pytest

from selfsup.cli import main
from selfsup.config import load_config
from selfsup.config.loading import RECIPES_DIR
from selfsup.core.errors import ConfigError
from selfsup.methods import METHODS

ZERO_IS_A_CHOICE = {("rotation", "head_hidden_dim")}  # 0: a linear 4-way head, documented


def _width_keys() -> list[tuple[str, str]]:
    keys = []
    for name in METHODS.names():
        for f in dataclasses.fields(METHODS.get(name).config_class):
            if f.name.endswith(("_dim", "_layers")) and (name, f.name) not in ZERO_IS_A_CHOICE:
                keys.append((name, f.name))
    return keys


def _recipe(method: str) -> str:
    recipe = f"{method}-digits"
    if not (RECIPES_DIR / f"{recipe}.yaml").is_file():
        pytest.skip(f"no recipe {recipe}")
    return recipe


def test_every_method_has_width_keys_checked():
    methods = {name for name, _ in _width_keys()}
    assert {"simclr", "moco", "byol", "simsiam", "dino", "barlowtwins", "vicreg", "dcl", "jigsaw"} <= methods


@pytest.mark.parametrize("method,key", _width_keys())
def test_a_zero_width_or_depth_is_refused(method, key):
    with pytest.raises(ConfigError, match=rf"'method\.{key}' must be >= 1, got 0"):
        load_config(_recipe(method), [f"method.{key}=0"])


def test_zero_where_it_is_a_choice_and_one_jigsaw_permutation():
    assert load_config("rotation-digits", ["method.head_hidden_dim=0"]).method.head_hidden_dim == 0
    with pytest.raises(ConfigError, match=r"'method\.num_permutations' must be >= 2, got 1"):
        load_config("jigsaw-digits", ["method.num_permutations=1"])


@pytest.mark.parametrize("value", ["0", "0.0", "-0.1"])
def test_a_learning_rate_of_zero_is_refused(value):
    with pytest.raises(ConfigError, match=r"'trainer\.lr' must be > 0"):
        load_config("simclr-digits", [f"trainer.lr={value}"])


def test_the_cli_refuses_in_one_line_with_exit_2(capsys):
    assert main(["train", "simclr-digits", "method.proj_dim=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["selfsup: error: config key 'method.proj_dim' must be >= 1, got 0"]
