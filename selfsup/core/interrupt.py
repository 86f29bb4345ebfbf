"""Ctrl-C (SIGINT) in the ``selfsup`` command: one line, exit code 130, nothing half-written.

:func:`install` runs first thing when ``selfsup`` starts as a command (``selfsup ...`` or
``python -m selfsup``; the package ``__init__`` calls it before its heavy imports). From then on
SIGINT:

- during start-up (imports, argument parsing: nothing has been written yet) prints
  ``selfsup: interrupted`` and exits 130 at once, instead of a ``KeyboardInterrupt`` traceback;
- once the CLI runs a command (:func:`started`), raises ``KeyboardInterrupt`` as Python's default
  handler does, and remembers that it came (:func:`received`): libraries that turn Ctrl-C into
  their own error (faiss raises ``RuntimeError: computation interrupted``) are then still
  reported as an interruption. Training replaces this handler with its own (finish the step,
  checkpoint, exit 130) while it runs.

Imported as a library (``import selfsup`` in a script or notebook) nothing is installed.
"""
from __future__ import annotations

import os
import signal
import sys
import threading

MESSAGE = "selfsup: interrupted"
EXIT_CODE = 128 + signal.SIGINT
_state = {"started": False, "received": False}


def is_cli(argv: list[str] | None = None, orig_argv: list[str] | None = None) -> bool:
    """Whether this process is the ``selfsup`` command: the console script, or ``python -m selfsup``
    (while the package is imported for ``-m``, ``sys.argv[0]`` is ``"-m"``)."""
    argv = sys.argv if argv is None else argv
    orig_argv = getattr(sys, "orig_argv", []) if orig_argv is None else orig_argv
    if not argv:
        return False
    if os.path.basename(argv[0]) == "selfsup":
        return True
    return argv[0] == "-m" and any(a == "-m" and b == "selfsup" for a, b in zip(orig_argv, orig_argv[1:]))


def install() -> None:
    """Install the command's SIGINT handler (main thread only; a no-op elsewhere)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)


def started() -> None:
    """The command is running: from now on SIGINT raises ``KeyboardInterrupt`` (see the module docstring)."""
    _state["started"] = True


def received() -> bool:
    """Whether SIGINT arrived since :func:`install`."""
    return _state["received"]


def _on_sigint(signum, frame) -> None:
    _state["received"] = True
    if not _state["started"]:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a closed or broken stream: the exit matters more
                pass
        os.write(2, (MESSAGE + "\n").encode())
        os._exit(EXIT_CODE)
    raise KeyboardInterrupt
