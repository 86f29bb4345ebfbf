"""selfsup.core.files: atomic writes get the umask's mode; user-caused I/O errors are one-line PathErrors."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from selfsup.core.errors import SelfsupError
from selfsup.core.files import PathError, atomic_write, check_writable_dir, file_mode, reading, writing
from support.permissions import as_other_user, make_read_only, shared_tmp


@pytest.fixture
def umask():
    """Set the process umask for the test; restore it afterwards."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _private_writer(tmp: Path) -> None:
    """Writes as tempfile.mkstemp and safetensors' save_file do: a 0600 file."""
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    os.write(fd, b"new")
    os.close(fd)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_write_gives_the_umask_mode_not_the_writers(tmp_path, umask, mask, mode):
    umask(mask)
    assert file_mode() == mode
    path = atomic_write(tmp_path / "sub" / "model.safetensors", _private_writer)
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == mode
    assert os.listdir(path.parent) == ["model.safetensors"]  # no temporary file left


def test_a_failing_writer_keeps_the_old_file_and_its_error(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text("old")

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise ValueError("a bug in the writer")

    with pytest.raises(ValueError, match="a bug in the writer"):
        atomic_write(path, broken)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["eval.json"]


def test_a_file_where_a_folder_should_be_is_named(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(PathError) as caught:
        atomic_write(tmp_path / "afile" / "sub" / "config.yaml", lambda tmp: tmp.write_text("y"))
    assert str(caught.value) == f"cannot write {tmp_path}/afile/sub/config.yaml: {tmp_path}/afile is a file, not a folder"
    assert isinstance(caught.value, SelfsupError) and isinstance(caught.value, OSError)
    with pytest.raises(PathError, match=r"^cannot write run.dir=.*/afile/sub: .*/afile is a file, not a folder$"):
        check_writable_dir(tmp_path / "afile" / "sub", "run.dir")


def test_an_error_no_user_causes_keeps_its_traceback(tmp_path):
    with pytest.raises(OSError) as caught, writing(tmp_path / "x"):
        raise OSError(errno.EBADF, "Bad file descriptor")  # a programming error, not the user's path
    assert type(caught.value) is OSError


def test_a_read_only_folder_is_one_line_before_and_while_writing():
    with shared_tmp() as root:
        (root / "run").mkdir()
        (root / "run" / "secret").write_text("x")
        (root / "run" / "secret").chmod(0o600)
        make_read_only(root / "run")
        with as_other_user():
            with pytest.raises(PathError, match=r"^cannot write run.dir=\S+/run: permission denied$"):
                check_writable_dir(root / "run", "run.dir")
            with pytest.raises(PathError, match=r"^cannot write run.dir=\S+/run/new: permission denied \(\S+/run\)$"):
                check_writable_dir(root / "run" / "new", "run.dir")
            with pytest.raises(PathError, match=r"^cannot write \S+/run/eval.json: permission denied$"):
                atomic_write(root / "run" / "eval.json", lambda tmp: tmp.write_text("{}"))
            with pytest.raises(PathError, match=r"^cannot read \S+/run/secret: permission denied$"):
                with reading(root / "run" / "secret"):
                    (root / "run" / "secret").read_bytes()
