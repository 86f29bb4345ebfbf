"""Config messages that used to mislead (issue 16, point 9): a method switched by an override kept the
recipe's keys of the old method (and blamed them on the user), invalid YAML had no line or column, and
``run.dir=~/x`` made a literal ``./~`` folder."""
import os
import warnings

import pytest

from selfsup.config import load_config
from selfsup.core.errors import ConfigError


def test_switching_the_method_drops_the_recipes_keys_the_new_one_lacks_with_one_notice():
    with pytest.warns(UserWarning) as notices:
        cfg = load_config("simclr-digits", ["method.name=byol"])
    assert cfg.method.name == "byol"
    assert cfg.method.crop_scale == [0.4, 1.0]  # a key both methods have keeps the recipe's value
    (notice,) = [str(w.message) for w in notices]
    assert notice.startswith("method.name=byol replaces the recipe's simclr; dropped the recipe's ")
    assert "method.temperature" in notice and "method.color_strength" in notice and "\n" not in notice
    assert "method.crop_scale" not in notice


def test_a_key_the_user_gives_is_never_dropped():
    with pytest.raises(ConfigError, match=r"unknown config key 'method.temperature'"):
        load_config("simclr-digits", ["method.name=byol", "method.temperature=0.1"])


def test_no_notice_without_a_switch():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config("simclr-digits", ["method.name=simclr", "method.temperature=0.3"])


def test_invalid_yaml_names_the_line_and_column(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("method:\n  name: simclr\ntrainer:\n  epochs: 3\n  lr: : 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(recipe))
    message = str(err.value)
    assert f"recipe {recipe} is not valid YAML at line 5, column 7: " in message and "\n" not in message


def test_a_run_config_with_invalid_yaml_names_the_line_too(tmp_path):
    from selfsup.runs.open_run import open_encoder

    (tmp_path / "config.yaml").write_text("method:\n  name: [simclr\n")
    with pytest.raises(ConfigError, match=r"run config .*config.yaml is not valid YAML at line 3, column 1"):
        open_encoder(tmp_path)


def test_tilde_in_a_path_key_means_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_config("simclr-digits", ["run.dir=~/runs/x", "data.cache_dir=~/cache", "resume=~/ckpt.pt"])
    assert cfg.run.dir == str(tmp_path / "runs" / "x")
    assert cfg.data.cache_dir == str(tmp_path / "cache") and cfg.resume == str(tmp_path / "ckpt.pt")
    assert load_config("simclr-digits", ["run.dir=runs/~x"]).run.dir == "runs/~x"  # only a leading ~
