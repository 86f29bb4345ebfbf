"""Which settings a run may change when it is resumed or re-run, and which it may not.

A run directory records what was trained: its checkpoints, ``metrics.jsonl``, ``encoder/`` and
``config.yaml``. Re-running ``selfsup train`` on it (to resume, or on a finished run) continues that
run, so every setting that shapes the trained weights, the data, the schedule or the recorded
metrics must be the recorded one; a change is refused (:func:`resume_changes` lists it) and
nothing in the run directory changes. The settings that may differ (:data:`FREE_ON_RESUME`) only
say where and how often files are written, how fast or where the same steps run, how far the same
schedule goes, or how the encoder is evaluated:

- ``run.*`` (``run.dir`` itself, plots, TensorBoard), ``resume``, ``recipe`` (the recipe's name);
- ``eval.*`` except the online monitor (``eval.online``, ``eval.online_*``: they shape the rows of
  ``metrics.jsonl`` and the monitor's checkpointed state);
- ``trainer.max_steps`` (where the unchanged schedule stops: raise it, or drop it, to continue a run
  that stopped early), ``trainer.checkpoint_every``, ``trainer.keep_checkpoints``,
  ``trainer.log_every``, ``trainer.compile``, ``trainer.channels_last``, ``trainer.nonfinite``
  (the policy for a NaN step; after a NaN stop, resume with ``skip``);
- ``data.cache_dir``, ``data.workers``, ``data.download``, ``data.in_memory_max_gb``,
  ``data.streaming`` (the same images in the same order, read another way).

Anything else (``trainer.epochs`` and ``trainer.lr`` included: they change the schedule) needs a new
run: another ``run.dir``, or ``resume=never`` to start the run over; ``backbone.init_from=RUN``
starts it from a run's trained encoder.
"""
from __future__ import annotations

import copy
import json
from typing import Any

from selfsup.config.loading import config_from_dict
from selfsup.config.schema import config_to_dict
from selfsup.core.errors import SelfsupError

FREE_ON_RESUME: tuple[str, ...] = (
    "run.*", "resume", "recipe", "eval.*",
    "trainer.max_steps", "trainer.checkpoint_every", "trainer.keep_checkpoints", "trainer.log_every",
    "trainer.compile", "trainer.channels_last", "trainer.nonfinite",
    "data.cache_dir", "data.workers", "data.download", "data.in_memory_max_gb", "data.streaming",
)
# exceptions to the patterns above: they change what training records
FIXED_ON_RESUME: tuple[str, ...] = ("eval.online", "eval.online_*")

_MISSING = object()


def free_on_resume(key: str) -> bool:
    """Whether the dotted config ``key`` may differ from the recorded run's on resume (see the module doc)."""
    return _matches(key, FREE_ON_RESUME) and not _matches(key, FIXED_ON_RESUME)


def resume_changes(recorded: dict, current: dict) -> list[str]:
    """The settings of ``current`` that differ from ``recorded`` (both nested config dicts, as
    :func:`~selfsup.config.config_to_dict` makes them) and may not change on resume, as
    ``"key old -> new"`` strings, sorted by key; ``[]`` when the run may continue."""
    old, new = _flatten(recorded), _flatten(current)
    changed = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        if not _same(a, b) and not free_on_resume(key):
            changed.append(f"{key} {_show(a)} -> {_show(b)}")
    return changed


def with_defaults(recorded: dict) -> dict:
    """A recorded config with this version's defaults for keys it lacks (keys added to the schema since
    it was written must not count as changes); as recorded when it no longer type-checks."""
    try:
        return config_to_dict(config_from_dict(copy.deepcopy(recorded)))
    except (SelfsupError, TypeError, ValueError):
        return recorded


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(key == p or (p.endswith("*") and key.startswith(p[:-1])) for p in patterns)


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; a dict-valued key (``backbone.model_args``) is split into its
    entries, so an added or removed entry is named."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):  # an empty one adds no key: {} and {x: 1} differ by "x (unset) -> 1"
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal as YAML would record them (a tuple equals a list; 1 equals 1.0; a bool never equals a number)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _show(value: Any) -> str:
    if value is _MISSING:
        return "(unset)"
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)
