"""Value ranges declared on config fields (``bounded``) and checked generically by ``validate_config``.

The ranges used to be inferred from key names in selfsup/config/checks.py (``*_size`` >= 1, ...);
the first test keeps every method key's check what that rule gave it, and holds new methods' keys
of those shapes to the same convention.
"""
from __future__ import annotations

import dataclasses

import pytest

from selfsup.config import Bounds, Config, MethodConfig, bounded, field_bounds, load_config, validate_config
from selfsup.core.errors import ConfigError
from selfsup.methods import METHODS


ZERO_IS_A_CHOICE = {("rotation", "head_hidden_dim")}  # 0: a linear head


def rule_from_the_key_name(name: str, method: str = "") -> Bounds | None:
    """The range selfsup/config/checks.py inferred from a method key's name before ranges were declared."""
    if name.endswith("_size"):
        return Bounds(ge=1)
    if name.endswith(("_dim", "_layers")):  # issue 16: a width or depth of 0 trained a constant loss
        return Bounds(ge=0) if (method, name) in ZERO_IS_A_CHOICE else Bounds(ge=1)
    if name.startswith("num_"):
        # one permutation: nothing to learn; I-JEPA without a target block: no loss
        return {"num_permutations": Bounds(ge=2), "num_targets": Bounds(ge=1)}.get(name, Bounds(ge=0))
    if name.endswith(("temp", "temperature", "_lr_scale")):
        return Bounds(gt=0)
    if name.endswith("_p") or "momentum" in name:
        return Bounds(ge=0, le=1)
    if name.endswith("crop_scale"):
        return Bounds(gt=0, le=1, pair=True)
    return None


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_key_keeps_the_range_its_name_implied(method):
    config_class = METHODS.get(method).config_class
    for f in dataclasses.fields(config_class):
        if isinstance(f.default, (bool, str)):  # the name rules skipped flags and names
            continue
        want = rule_from_the_key_name(f.name, method)
        if want is not None:
            spelled = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(want).items()
                                if v is not None and v is not False)
            assert field_bounds(f) == want, f"{config_class.__name__}.{f.name}: declare bounded(default, {spelled})"


# The ranges validate_config checked by key in the core sections before they were declared on the fields.
CORE_RANGES = {
    **dict.fromkeys(["trainer.epochs", "trainer.max_steps", "trainer.batch_size", "trainer.grad_accum",
                     "trainer.checkpoint_every", "trainer.log_every", "data.image_size", "data.num_samples",
                     "data.num_classes", "eval.batch_size"], Bounds(ge=1)),
    **dict.fromkeys(["trainer.warmup_epochs", "trainer.weight_decay", "trainer.keep_checkpoints",
                     "trainer.seed", "data.in_memory_max_gb"], Bounds(ge=0)),
    "trainer.lr": Bounds(gt=0),  # issue 16: lr=0 trained nothing
    "trainer.momentum": Bounds(ge=0, lt=1),
    "eval.knn_temperature": Bounds(gt=0),
}


def declared_ranges(cls: type, prefix: str = "") -> dict[str, Bounds]:
    found = {}
    for f in dataclasses.fields(cls):
        if f.name == "method" and not prefix:
            continue
        if isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory):
            found.update(declared_ranges(f.default_factory, f"{prefix}{f.name}."))
        elif field_bounds(f) is not None:
            found[prefix + f.name] = field_bounds(f)
    return found


def test_core_sections_declare_the_ranges_checked_by_key_before():
    """Every key the old lists checked keeps exactly its range (keys added since may declare their own)."""
    declared = declared_ranges(Config)
    assert {key: declared.get(key) for key in CORE_RANGES} == CORE_RANGES


@pytest.mark.parametrize("bounds,inside,outside,rule", [
    (Bounds(ge=1), [1, 5], [0, -3], ">= 1"),
    (Bounds(ge=0), [0, 0.5], [-1e-9], ">= 0"),
    (Bounds(gt=0), [1e-9, 3.0], [0, -1], "> 0"),
    (Bounds(le=2), [2, -5], [2.5], "<= 2"),
    (Bounds(ge=0, le=1), [0, 1, 0.3], [-0.1, 1.1], "in [0, 1]"),
    (Bounds(ge=0, lt=1), [0, 0.99], [1, -1], "in [0, 1)"),
    (Bounds(gt=0, le=1, pair=True), [(0.1, 1.0), (0.5, 0.5)], [(0.9, 0.2), (0, 1), (0.2, 1.5)],
     "[low, high] with 0 < low <= high <= 1"),
])
def test_bounds_admit_and_describe(bounds, inside, outside, rule):
    assert all(bounds.admits(v) for v in inside)
    assert not any(bounds.admits(v) for v in outside)
    assert bounds.describe() == rule


def test_a_bound_is_closed_or_open_and_a_pair_needs_both_ends():
    with pytest.raises(ValueError):
        Bounds(ge=0, gt=0)
    with pytest.raises(ValueError):
        Bounds(gt=0, pair=True)


@dataclasses.dataclass
class WidthConfig(MethodConfig):
    name: str = "width-test"
    width: int = bounded(4, ge=2, help="an example")
    sigma: float = 0.5  # no range declared: not checked
    side: int | None = bounded(None, ge=1)


def test_validate_config_checks_any_method_config_by_its_declared_ranges():
    assert dataclasses.fields(WidthConfig)[1].metadata["help"] == "an example"  # other metadata passes through
    with pytest.raises(ConfigError) as info:
        validate_config(Config(method=WidthConfig(width=1)))
    assert str(info.value) == "config key 'method.width' must be >= 2, got 1"
    validate_config(Config(method=WidthConfig(sigma=-3.0, side=None)))  # unbounded, and None is never checked
    with pytest.raises(ConfigError, match=r"'method.side' must be >= 1, got 0$"):
        validate_config(Config(method=WidthConfig(side=0)))


@pytest.mark.parametrize("override,message", [
    ("method.momentum_teacher=1.5", "config key 'method.momentum_teacher' must be in [0, 1], got 1.5"),
    ("method.local_crop_size=0", "config key 'method.local_crop_size' must be >= 1, got 0"),
    ("method.local_crop_scale=[0.5, 0.2]",
     "config key 'method.local_crop_scale' must be [low, high] with 0 < low <= high <= 1, got [0.5, 0.2]"),
    ("method.student_temp=0", "config key 'method.student_temp' must be > 0, got 0.0"),
    ("method.num_local_crops=-1", "config key 'method.num_local_crops' must be >= 0, got -1"),
])
def test_a_method_key_out_of_its_range_is_one_line_naming_it(override, message):
    with pytest.raises(ConfigError) as info:
        load_config("dino-digits", [override])
    assert str(info.value) == message
