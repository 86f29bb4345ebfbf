"""Atomic training checkpoints: write to a temporary file, fsync, rename.

A checkpoint is ``checkpoints/step-XXXXXXXX.pt`` holding every piece of training state as
tensors and plain Python values, so it loads with ``torch.load(weights_only=True)`` and a
file that would execute code on load is refused.
"""
from __future__ import annotations

import pickle
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selfsup.core.errors import CheckpointError
from selfsup.core.files import atomic_write

_NAME = re.compile(r"^step-(\d{8})\.pt$")


def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"step-{step:08d}.pt"


def save_checkpoint(directory: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` atomically as the checkpoint of ``step``; keep only the newest ``keep`` (0: all)."""
    directory = Path(directory)
    for stale in directory.glob(".step-*.pt.tmp*"):  # left by a process killed while writing
        stale.unlink(missing_ok=True)
    final = checkpoint_path(directory, step)
    # a reader sees the old set of files or the new one, never half a file; data and rename survive a power cut
    atomic_write(final, lambda tmp: torch.save(state, tmp), fsync=True)
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return final


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest first."""
    if not Path(directory).is_dir():
        return []
    found = [p for p in Path(directory).iterdir() if _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def discard_after(directory: Path, step: int) -> list[Path]:
    """Delete the checkpoints of steps after ``step``: a run restarting at ``step`` (afresh, from an
    older checkpoint, or past a corrupt newer one) abandons them, and ``resume=auto`` must never
    pick them up later. Returns the deleted paths."""
    gone = [p for p in list_checkpoints(directory) if int(_NAME.match(p.name).group(1)) > step]
    for path in gone:
        path.unlink(missing_ok=True)
    return gone


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``); anything else is a one-line CheckpointError.

    A file whose unpickling would import or call Python objects (code execution) is refused,
    never executed; so is a truncated or corrupt file, or a file that is no selfsup checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols: the error below says it all
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a refused pickle, a truncated zip, bad magic, EOF, ...
        if isinstance(err, pickle.UnpicklingError) and "weights only" in str(err).lower():
            found = _UNSAFE.search(str(err))
            needs = f" (it needs {found.group(1) or 'pickle opcode ' + found.group(2)})" if found else ""
            raise CheckpointError(f"checkpoint {path} refused: unpickling it could run arbitrary Python code{needs}; "
                                  "selfsup loads only tensors and plain data (weights_only=True)") from None
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({_first_line(err)})") from None
    missing = [key for key in ("step", "model", "optimizer", "rng") if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f"{path} is no selfsup training checkpoint (it lacks {', '.join(missing)})")
    return state


_UNSAFE = re.compile(r"Unsupported global: GLOBAL (\S+)|Unsupported operand (\d+)")


def _first_line(err: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    return first.split(". ")[0].rstrip(".")


def latest_checkpoint(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads; unreadable ones are skipped with a warning."""
    for path in reversed(list_checkpoints(directory)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as err:
            warnings.warn(f"skipping {err}", stacklevel=2)
    return None


def rng_state() -> dict[str, Any]:
    """Host RNG states (torch, CUDA, numpy, python) as weights_only-loadable values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
