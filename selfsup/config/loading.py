"""Loading a configuration: recipes (a path or a packaged name), ``key=value`` overrides, and the
typed build of a nested dict against the schema.

An unknown key or a value of the wrong type raises :class:`~selfsup.core.errors.ConfigError`
naming the key and the closest valid one; the method section is typed by the class registered
under ``method.name`` in :data:`~selfsup.core.registry.METHODS`.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml

from selfsup.config.checks import validate_config, validate_method
from selfsup.config.schema import Config, MethodConfig, config_to_dict
from selfsup.core.errors import ConfigError
from selfsup.core.files import atomic_write
from selfsup.core.registry import METHODS

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
DEFAULT_RECIPE = "simclr-digits"


# --------------------------------------------------------------------------- loading


def find_recipe(recipe: str | None) -> Path:
    """Resolve a recipe given as a path or as a name under ``recipes/`` (``simclr-digits``)."""
    recipe = recipe or DEFAULT_RECIPE
    path = Path(recipe)
    if path.is_file():
        return path
    named = RECIPES_DIR / (recipe if recipe.endswith(".yaml") else recipe + ".yaml")
    if named.is_file():
        return named
    names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    close = difflib.get_close_matches(path.stem, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (recipes: {', '.join(names)})"
    raise ConfigError(f"recipe '{recipe}' not found{hint}")


def load_config(recipe: str | None = None, overrides: list[str] | None = None) -> Config:
    """Build a typed :class:`Config` from a recipe (path or name) and ``key=value`` overrides."""
    path = find_recipe(recipe)
    raw = read_yaml(path, "recipe") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {path} must be a mapping of sections, got {type(raw).__name__}")
    raw.setdefault("recipe", path.stem)
    return resolve_config(raw, overrides)


def read_yaml(path: Path, what: str = "recipe") -> Any:
    """The YAML document in ``path``; invalid YAML raises a one-line ConfigError with its line and column."""
    return parse_yaml(Path(path).read_text(), f"{what} {path}")


def parse_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load(text)``; invalid YAML raises a one-line ConfigError naming ``source`` (``recipe
    PATH``), the line and column, and the problem."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{source} is not valid YAML{where}: {problem}") from None


def resolve_config(raw: dict, overrides: list[str] | None = None) -> Config:
    """Apply ``key=value`` overrides to a nested dict (a recipe, a run's config.yaml) and type it.

    When an override switches ``method.name``, the ``method.*`` keys that came with the dict (not
    from the overrides) and that the new method has no field for are dropped, with a one-line warning.
    """
    before = _method_name(raw)
    for item in overrides or []:
        apply_override(raw, item)
    user_keys = {item.partition("=")[0].split(".")[1] for item in overrides or [] if item.startswith("method.")}
    _drop_stale_method_keys(raw, before, user_keys)
    return config_from_dict(raw)


def _method_name(raw: dict) -> Any:
    method = raw.get("method")
    return method.get("name", MethodConfig.name) if isinstance(method, dict) else MethodConfig.name


def _drop_stale_method_keys(raw: dict, before: Any, user_keys: set[str]) -> None:
    """Drop the old method's keys (not the user's) that the method chosen by an override lacks."""
    after = _method_name(raw)
    if after == before or after not in METHODS:
        return
    fields = {f.name for f in dataclasses.fields(METHODS.get(after).config_class)}
    stale = [key for key in raw["method"] if key not in fields and key not in user_keys]
    for key in stale:
        del raw["method"][key]
    if stale:
        keys = ", ".join(f"method.{key}" for key in stale)
        warnings.warn(f"method.name={after} replaces the recipe's {before}; dropped the recipe's {keys}, "
                      f"which {after} does not have", stacklevel=3)


def method_config(name: str, options: dict[str, Any]) -> MethodConfig:
    """Method ``name``'s typed config from Python keyword ``options`` (:func:`~selfsup.methods.create_method`),
    checked as a recipe's ``method`` section is: the same types, bounds and one-line ConfigErrors;
    an unknown option names the closest known one."""
    cls = METHODS.get(name).config_class
    known = [f.name for f in dataclasses.fields(cls) if f.name != "name"]
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"options: {', '.join(known)}"
            raise ConfigError(f"unknown option '{key}' for {name}; {hint}")
    return validate_method(_build(cls, {**options, "name": name}, "method.", {}, known))


def apply_override(raw: dict, item: str) -> None:
    """Set ``a.b.c=value`` in a nested dict; the value is parsed as YAML (``1e-3``, ``true``, ``[1,2]``)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{item}' is not of the form key=value")
    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key '{key}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def config_from_dict(raw: dict) -> Config:
    """Type-check a nested dict against the schema (the method section by its registered class)."""
    method_raw = raw.get("method") or {}
    if not isinstance(method_raw, dict):
        raise ConfigError("config key 'method' must be a section (method.name=...)")
    method_cls = METHODS.get(method_raw.get("name", MethodConfig.name)).config_class
    schemas = {"method": method_cls}
    valid = _all_keys(Config, schemas)
    return validate_config(_build(Config, raw, "", schemas, valid))


def save_config(cfg: Config, path: Path) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False)))


# --------------------------------------------------------------------------- checking


def _all_keys(cls: type, schemas: dict[str, type], prefix: str = "") -> list[str]:
    keys = []
    for f, hint in _fields(cls):
        sub = schemas.get(f.name) if not prefix else None
        sub = sub or (hint if dataclasses.is_dataclass(hint) else None)
        if sub is not None:
            keys += _all_keys(sub, {}, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def _build(cls: type, raw: dict, prefix: str, schemas: dict[str, type], valid: list[str]) -> Any:
    fields = {f.name: hint for f, hint in _fields(cls)}
    for key in raw:
        if key not in fields:
            full = prefix + str(key)
            close = difflib.get_close_matches(full, valid, n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{full}'{hint}")
    kwargs = {}
    for name, hint in fields.items():
        if name not in raw:
            continue
        sub = schemas.get(name) if not prefix else None
        sub = sub or (hint if dataclasses.is_dataclass(hint) else None)
        full = prefix + name
        if sub is not None:
            if not isinstance(raw[name], dict):
                raise ConfigError(f"config key '{full}' is a section; set its keys as {full}.KEY=value")
            kwargs[name] = _build(sub, raw[name], full + ".", {}, valid)
        else:
            kwargs[name] = _check(full, raw[name], hint)
    if not prefix and "method" not in kwargs:
        kwargs["method"] = schemas["method"]()
    return cls(**kwargs)


def _check(key: str, value: Any, hint: Any) -> Any:
    """Return ``value`` converted to ``hint`` (int -> float only), or raise a one-line ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check(key, value, arg)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint_text = f" (did you mean '{close[0]}'?)" if close else ""
            choices = " | ".join(str(a) for a in args)
            raise ConfigError(f"config key '{key}' must be one of {choices}, got '{value}'{hint_text}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list like [1, 2], got '{value}'")
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            raise ConfigError(f"config key '{key}' expects {len(args)} values, got {len(value)}")
        item_type = args[0] if args else Any
        return [_check(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
    return _check_scalar(key, value, hint)


def _check_scalar(key: str, value: Any, hint: Any) -> Any:
    if hint is Any:
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str) and value.startswith("~"):
        return os.path.expanduser(value)  # a path (run.dir=~/runs/x): never a literal ./~ folder
    if hint in (bool, str) and isinstance(value, hint):
        return value
    if hint is dict and isinstance(value, dict):  # free-form (backbone.model_args): values unchecked
        return dict(value)
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. a path or name that YAML read as a number
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", dict: "a mapping like {a: 1}"}
    raise ConfigError(f"config key '{key}' expects {names.get(hint, hint)}, got '{value}'")
