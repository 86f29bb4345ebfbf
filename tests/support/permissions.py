"""Permission denials in tests, also where the tests run as root (who passes every permission check).

As an ordinary user, ``chmod`` is enough. As root, :func:`as_other_user` makes the block run with
nobody's effective uid and gid (root keeps its real and saved ids, so it switches back afterwards),
and :func:`shared_tmp` gives a folder nobody can reach (pytest's own ``/tmp/pytest-of-root`` is
``0700``). Where neither works (a non-root user who bypasses permissions), the test is skipped.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

NOBODY = 65534


@contextmanager
def as_other_user() -> Iterator[None]:
    """As root: the block runs as uid/gid 65534 (nobody); otherwise as this user."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@contextmanager
def shared_tmp() -> Iterator[Path]:
    """A fresh ``0755`` folder under the system temporary folder, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="selfsup-perm-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for sub in [path, *path.rglob("*")]:  # make_read_only's folders: writable again, to be removed
            if sub.is_dir() and not sub.is_symlink():
                sub.chmod(0o755)
        shutil.rmtree(path, ignore_errors=True)


def make_read_only(folder: Path) -> None:
    """``chmod -R a-w`` on ``folder``; skips the test when the process could still write there."""
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    probe = folder / ".write-probe"
    with as_other_user():
        try:
            probe.write_text("x")
        except PermissionError:
            return
    probe.unlink()
    pytest.skip("this process can write into read-only folders (neither an ordinary user nor root)")
