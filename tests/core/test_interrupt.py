"""Ctrl-C in the ``selfsup`` command (selfsup.core.interrupt): one line, exit 130, no traceback,
whether it lands during start-up, in a command, or inside a library that turns it into its own error."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfsup.core import interrupt


@pytest.mark.parametrize("argv, orig, expected", [
    (["/venv/bin/selfsup", "train"], ["/venv/bin/python", "/venv/bin/selfsup", "train"], True),
    (["-m"], ["python", "-X", "dev", "-m", "selfsup", "eval"], True),
    (["-m"], ["python", "-m", "pytest"], False),
    (["/x/pytest", "-q"], ["python", "/x/pytest", "-q"], False),
    (["script.py"], ["python", "script.py"], False),
    ([], [], False),
])
def test_only_the_command_installs_the_handler(argv, orig, expected):
    assert interrupt.is_cli(argv, orig) is expected


@pytest.fixture
def fresh_state(monkeypatch):
    monkeypatch.setattr(interrupt, "_state", {"started": False, "received": False})


def _command_interrupted_inside_a_library(args):
    """What faiss does with Ctrl-C during a search: the signal handler runs, then it raises its own error."""
    try:
        interrupt._on_sigint(signal.SIGINT, None)
    except KeyboardInterrupt:
        raise RuntimeError("Error in void faiss::InterruptCallback::check(): computation interrupted") from None


def test_a_library_error_after_ctrl_c_is_an_interruption(monkeypatch, capsys, fresh_state):
    from selfsup import cli

    monkeypatch.setitem(cli.COMMANDS, "plot", _command_interrupted_inside_a_library)
    assert cli.main(["plot", "somewhere"]) == 130
    assert capsys.readouterr().err == "selfsup: interrupted\n"


def test_a_library_error_without_ctrl_c_still_raises(monkeypatch, fresh_state):
    from selfsup import cli

    def fails(args):
        raise RuntimeError("a real bug")

    monkeypatch.setitem(cli.COMMANDS, "plot", fails)
    with pytest.raises(RuntimeError, match="a real bug"):
        cli.main(["plot", "somewhere"])


def _loaded(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see the imports progress")
def test_ctrl_c_during_startup_is_one_line_and_exit_130(tmp_path):
    """SIGINT while ``python -m selfsup`` still imports torch & co: no KeyboardInterrupt traceback."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "selfsup", "list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not _loaded(proc.pid, "libtorch") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # torch's libraries mapped: the package's heavy imports are under way
    assert proc.poll() is None, "the command finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (130, "selfsup: interrupted\n")
    assert out == ""
