"""A warm-up as long as the schedule or longer (issue 16, point 8): the learning rate never decays (and, longer,
never peaks); the run starts with one warning saying so. A shorter warm-up, or ``trainer.max_steps`` stopping
a run early (the schedule still spans ``trainer.epochs``), gives none."""
from __future__ import annotations

import warnings

import pytest

from selfsup.data import open_split
from selfsup.engine.build import build_method, make_accelerator
from selfsup.engine.trainer import Trainer
from support import tiny_config


def _warnings(tmp_path, *extra) -> list[str]:
    cfg = tiny_config(tmp_path, *extra)  # 64 images, batch 16: 4 steps an epoch; trainer.epochs=2
    data = open_split(cfg.data, "train", seed=0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        Trainer(cfg, build_method(cfg, data), data, tmp_path, make_accelerator(cfg))
    return [str(w.message) for w in record if "warm" in str(w.message)]


@pytest.mark.parametrize("warmup", ["2", "5"])
def test_a_warmup_as_long_as_the_run_warns_once(tmp_path, warmup):
    said = _warnings(tmp_path, f"trainer.warmup_epochs={warmup}")
    assert len(said) == 1 and f"trainer.warmup_epochs={warmup}" in said[0] and "trainer.epochs=2" in said[0], said


def test_a_shorter_warmup_or_an_early_stop_does_not_warn(tmp_path):
    assert _warnings(tmp_path, "trainer.warmup_epochs=1") == []
    assert _warnings(tmp_path, "trainer.warmup_epochs=1", "trainer.max_steps=2") == []
