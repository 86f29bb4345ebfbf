"""Files as users expect them: atomic writes with the umask's permissions, and one-line I/O errors.

- :func:`atomic_write` writes through a temporary name beside the target and ``os.replace``, and
  gives the file the mode a plain ``open(path, "w")`` would (``0o666 & ~umask``): temporary-file
  writers (``tempfile.mkstemp``, safetensors' ``save_file``) create ``0600`` files, which another
  user could not read.
- :func:`reading` / :func:`writing` turn an ``OSError`` a user can cause (permissions, a read-only
  file system, a file where a folder should be, a full disk) into :class:`PathError`: one line
  ``cannot write PATH: permission denied``, exit code 2. Other ``OSError``\\ s pass unchanged, so a
  genuine bug keeps its traceback.
- :func:`check_writable_dir` tells before a long job whether it will be able to write a folder.
"""
from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from selfsup.core.errors import SelfsupError

__all__ = ["PathError", "atomic_write", "apply_umask", "reading", "writing", "path_error", "check_writable_dir", "file_mode",
           "USER_ERRNOS"]

# errors of the environment, not of the code: the message names the path and the reason
USER_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENOSPC,
                         errno.EDQUOT, errno.ENAMETOOLONG, errno.ELOOP, errno.EEXIST})


class PathError(SelfsupError, OSError):
    """A path that cannot be read or written (permissions, read-only file system, a file in the way,
    full disk). Also an ``OSError``, so code that tolerates a failed cache write still does."""


def file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file under the current umask (``0o644`` under ``022``)."""
    try:  # Linux >= 4.7 shows the umask without changing it (os.umask would, for every thread)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def apply_umask(path: str | Path) -> None:
    """Give the file ``path`` (or every file in the folder ``path``, recursively) :func:`file_mode`."""
    path, mode = Path(path), file_mode()
    for file in ([path] if not path.is_dir() else [p for p in path.rglob("*") if p.is_file()]):
        os.chmod(file, mode)


def _reason(err: OSError, path: Path) -> str:
    """``permission denied``, ``read-only file system``, ``PARENT is a file``, ..."""
    if err.errno in (errno.ENOTDIR, errno.EEXIST):  # a file where a folder is made or walked through
        for parent in [path, *path.parents]:
            if parent.is_file():
                return f"{parent} is a file, not a folder"
    return (err.strerror or str(err)).lower()


def path_error(err: OSError, path: str | Path, verb: str) -> PathError | OSError:
    """``PathError("cannot VERB PATH: REASON")`` for an error a user can cause, else ``err`` itself."""
    if isinstance(err, PathError) or err.errno not in USER_ERRNOS:
        return err
    return PathError(f"cannot {verb} {path}: {_reason(err, Path(path))}")


@contextmanager
def writing(path: str | Path, verb: str = "write") -> Iterator[None]:
    """Raise :class:`PathError` naming ``path`` when the block fails for a user-caused reason."""
    try:
        yield
    except OSError as err:
        mapped = path_error(err, path, verb)
        if mapped is err:
            raise
        raise mapped from err


@contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """:func:`writing` for reads: ``cannot read PATH: permission denied``."""
    with writing(path, "read"):
        yield


def atomic_write(path: str | Path, write: Callable[[Path], None], *, fsync: bool = False) -> Path:
    """``write(tmp)`` to a temporary file beside ``path``, give it the umask's mode, then rename it to
    ``path``: a reader sees the old file or the new one, never half of one. ``fsync`` also flushes the
    data and the rename to disk (checkpoints). Failures a user can cause raise :class:`PathError`;
    the temporary file never stays behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with writing(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write(tmp)
            apply_umask(tmp)
            if fsync:
                _fsync(tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    if fsync:
        _fsync(path.parent)
    return path


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file's data, or a folder's entries) to disk; a platform that cannot open a
    folder is let off (the file's own data is already synced)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if path.is_dir():
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


def check_writable_dir(path: str | Path, setting: str) -> None:
    """Raise :class:`PathError` (``cannot write run.dir=PATH: permission denied``) when ``path`` could
    not be created or written: its nearest existing ancestor is a file, or not writable for this process
    (permissions for its effective user, or a read-only file system). Creates nothing."""
    path = Path(path).expanduser()
    existing = next((p for p in [path, *path.parents] if p.exists() or p.is_symlink()), None)
    if existing is None:
        return
    what = f"{setting}={path}" if setting else str(path)
    if not existing.is_dir():
        raise PathError(f"cannot write {what}: {existing} is a file, not a folder")
    effective = os.access in os.supports_effective_ids
    if not os.access(existing, os.W_OK | os.X_OK, effective_ids=effective):
        reason = "read-only file system" if _read_only_fs(existing) else "permission denied"
        raise PathError(f"cannot write {what}: {reason}" + (f" ({existing})" if existing != path else ""))


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False
