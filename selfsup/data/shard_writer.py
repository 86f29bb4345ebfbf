"""``selfsup data shards IMAGEFOLDER --out DIR``: an ImageFolder as WebDataset-format tar shards.

Each split (``train/``, ``val/``, ``test/``, or the folder itself as ``train``) becomes
``OUT/<split>-NNNNNN.tar``, ``shard_size`` samples per shard in the folder's order (class, then
path: sample ``i`` of the shards is the ImageFolder's sample ``i``). A sample is ``KEY.<ext>`` (the
image file's bytes, unchanged) and ``KEY.cls`` (its class index as text; left out for unlabelled
images), ``KEY`` its index ``{i:08d}``. ``OUT/classes.json`` lists the class names.
:mod:`selfsup.data.shards` reads them (``data.name=shards``); so does ``webdataset``.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np

from selfsup.core.errors import DataError
from selfsup.core.files import atomic_write
from selfsup.core.progress import progress_bar
from selfsup.data.imagefolder import UNLABELLED, scan_folder

__all__ = ["write_shards"]


def _splits_of(folder: Path) -> list[tuple[str, Path]]:
    """``[(name, path)]``: ``train`` / ``val`` / ``test`` sub-folders, or the folder itself as ``train``."""
    found = [(name, folder / name) for name in ("train", "val", "test") if (folder / name).is_dir()]
    return found or [("train", folder)]


def write_shards(folder: str | os.PathLike[str], out: str | os.PathLike[str], *, shard_size: int = 1000,
                 progress: bool = True) -> dict:
    """Write an ImageFolder (``train/``, ``val/``, ``test/`` sub-folders, or one split) as shards
    ``OUT/<split>-NNNNNN.tar`` of ``shard_size`` samples (``KEY.<ext>`` with the file's bytes unchanged
    and ``KEY.cls``), in the folder's order, plus ``OUT/classes.json``. Each file is written under a
    temporary name and renamed when complete. Returns ``{split: {"samples", "shards"}}``.

    Raises :class:`DataError` for a missing or empty folder, a bad ``shard_size``, or splits whose
    class folders differ; :class:`~selfsup.core.files.PathError` when ``out`` cannot be written.
    """
    if shard_size < 1:
        raise DataError(f"--shard-size={shard_size} must be a positive integer")
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"IMAGEFOLDER={root} {'is not a folder' if root.exists() else 'does not exist'}")
    splits = [(name, path, *scan_folder(path, "IMAGEFOLDER")[:3]) for name, path in _splits_of(root)]
    classes = splits[0][2]
    for name, _, other, _, _ in splits[1:]:
        if other != classes:
            raise DataError(f"IMAGEFOLDER={root}: {name}/ has class folders {other[:5]} but {splits[0][0]}/ has "
                            f"{classes[:5]}: labels would not agree")
    out_dir = Path(out).expanduser()
    atomic_write(out_dir / "classes.json", lambda tmp: tmp.write_text(json.dumps(classes)))
    summary: dict = {}
    for name, base, _, files, labels in splits:
        count = -(-len(files) // shard_size)
        with progress_bar(total=len(files), desc=f"shards {name}", unit="img", disable=not progress) as bar:
            for s in range(count):
                part = range(s * shard_size, min((s + 1) * shard_size, len(files)))
                atomic_write(out_dir / f"{name}-{s:06d}.tar",
                             lambda tmp, part=part: _write_tar(tmp, base, files, labels, part))
                bar.update(len(part))
        summary[name] = {"samples": len(files), "shards": count}
    return summary


def _write_tar(tmp: Path, base: Path, files: list[str], labels: np.ndarray, part: range) -> None:
    """One shard: for each sample ``i`` of ``part``, ``{i:08d}.<ext>`` (the file's bytes) and ``{i:08d}.cls``."""
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i in part:
            data = (base / files[i]).read_bytes()
            ext = Path(files[i]).suffix.lower().lstrip(".")
            key = f"{i:08d}"
            members = [(f"{key}.{ext}", data)]
            if labels[i] != UNLABELLED:
                members.append((f"{key}.cls", str(int(labels[i])).encode()))
            for member, payload in members:
                info = tarfile.TarInfo(member)
                info.size, info.mtime, info.mode = len(payload), 0, 0o644
                tar.addfile(info, io.BytesIO(payload))
