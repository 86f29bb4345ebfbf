"""``data.name=shards``: WebDataset-format tar shards, read by random access through an index.

A shard is a plain tar of samples ``KEY.jpg`` (or ``.png``, ...) plus ``KEY.cls`` (the class index as
text), members of one sample adjacent: the WebDataset convention, so shards written here are read by
``webdataset`` and shards written by it are read here. ``selfsup data shards``
(:mod:`selfsup.data.shard_writer`) makes them from an ImageFolder, in its order (class, then path),
plus a ``classes.json`` naming the classes.

Reading: the split's shards (a folder, a glob, a brace pattern ``train-{000000..000099}.tar``, or an
object-store URL through fsspec: ``s3://``, ``gs://``, ``https://``) are scanned once into an index,
sample ``i`` -> (shard, byte offset, length, label), cached under ``cache_dir/shards``. A batch then
reads exactly its images by seek + read. The tar's sequential stream is *not* used, on purpose:

* the data order stays a function of (seed, step) (``sampler.indices(step, rank, world)``, as for
  every other split): a run killed mid-epoch and resumed at step ``k`` reads exactly the batches
  of an uninterrupted run from ``k`` on: no image twice, none missed within the epoch;
* each process reads only its share of each batch (its indices), never a whole shard;
* sample ``i`` is the ImageFolder's sample ``i``, so the same seed gives the same batches as training
  from the folder itself.

A sequential shard stream with a shuffle buffer (``webdataset.WebDataset``) would give neither an
order that is a pure function of the step nor an exact resume without replaying the epoch.

A :class:`ShardSplit` is a streamed :class:`~selfsup.data.split.Split` (DataLoader workers decode
each step's batch, :class:`~selfsup.data.step_loader.StepStream`); :func:`open_shards` loads a
split whose decoded size is at most ``data.in_memory_max_gb`` into memory instead, as for an
ImageFolder. Images decode to the canvas with :func:`~selfsup.data.decode.decode_canvas`.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import re
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from selfsup.core.errors import DataError
from selfsup.core.files import atomic_write
from selfsup.core.progress import progress_bar
from selfsup.core.threads import available_cores
from selfsup.data.datasets import ImageDataset, channel_stats, default_cache_dir, make_dataset, register_dataset
from selfsup.data.decode import JPEG_DECODER, decode_canvas
from selfsup.data.fingerprint import hash_tensor
from selfsup.data.imagefolder import IMG_EXTENSIONS, UNLABELLED, report_bad_files
from selfsup.data.on_demand import OnDemandSplit

if TYPE_CHECKING:
    from selfsup.config import DataConfig

__all__ = ["ShardSplit", "expand_pattern", "open_shards", "shard_urls"]

INDEX_VERSION = 1
_IMAGE_EXTS = tuple(e.lstrip(".") for e in IMG_EXTENSIONS)


# ---------------------------------------------------------------------------------------------
# Where the shards are


def expand_pattern(pattern: str) -> list[str]:
    """Brace expansion as WebDataset writes shard lists: ``{a,b}`` and zero-padded ranges ``{000..012}``."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[:match.start()], pattern[match.end():]
    if (rng := re.fullmatch(r"(\d+)\.\.(\d+)", body)) is not None:
        lo, hi = rng.group(1), rng.group(2)
        options = [str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    return [out for option in options for out in expand_pattern(head + option + tail)]


def _is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def shard_urls(path: str, setting: str = "data.train") -> list[str]:
    """The shard files of ``path``: a folder (its ``*.tar``, sorted), a glob, a brace pattern, or
    URLs (brace pattern; a glob through fsspec). Raises :class:`DataError` when nothing is found."""
    path = path.removeprefix("file://")
    urls: list[str] = []
    for part in expand_pattern(path):
        if _is_url(part):
            if glob.has_magic(part):
                import fsspec

                fs, _, found = fsspec.get_fs_token_paths(part)
                urls.extend(fs.unstrip_protocol(p) for p in sorted(found))
            else:
                urls.append(part)
            continue
        local = Path(part).expanduser()
        if local.is_dir():
            urls.extend(str(p) for p in sorted(local.glob("*.tar")))
        elif glob.has_magic(part):
            urls.extend(sorted(glob.glob(str(local))))
        elif local.is_file():
            urls.append(str(local.resolve()))
        else:
            raise DataError(f"{setting}={part} does not exist: give a folder of .tar shards, a glob or a "
                            "brace pattern (train-{000000..000009}.tar)")
    if not urls:
        raise DataError(f"{setting}={path} holds no .tar shards (make them with `selfsup data shards IMAGEFOLDER "
                        "--out DIR`)")
    return urls


def split_pattern(split: str, root: str | None, train: str | None, val: str | None) -> tuple[str, str]:
    """``(pattern, config key)`` of a split: ``data.train`` / ``data.val``, else ``data.root``'s
    ``train-*.tar`` (``val-*.tar`` or ``test-*.tar``), as :func:`write_shards` names them."""
    key = "data.train" if split == "train" else "data.val"
    pattern = train if split == "train" else val
    if pattern is None and root is not None:
        for name in (["train"] if split == "train" else ["val", "test"]):
            if _is_url(root) or glob.glob(os.path.join(glob.escape(os.path.expanduser(root)), f"{name}-*.tar")):
                pattern = os.path.join(root, f"{name}-*.tar")
                break
    if pattern is None:
        raise DataError(f"{key} is not set: data.name=shards needs {key}=SHARDS (a folder, glob or brace pattern "
                        "of .tar shards) or data.root=DIR holding train-*.tar and val-*.tar / test-*.tar")
    return pattern, key


def _open(url: str):
    """A binary, seekable file of a shard (local, or fsspec for URLs)."""
    if _is_url(url):
        import fsspec

        return fsspec.open(url, "rb").open()
    return open(url, "rb")


# ---------------------------------------------------------------------------------------------
# The index: sample i -> (shard, offset, length, label)


def _stamp(url: str) -> str:
    """What identifies a shard's contents cheaply: size and mtime (local), size and ETag / mtime (fsspec)."""
    if not _is_url(url):
        st = os.stat(url)
        return f"{st.st_size}:{st.st_mtime_ns}"
    import fsspec

    fs, _, (path,) = fsspec.get_fs_token_paths(url)
    info = fs.info(path)
    return f"{info.get('size')}:{info.get('ETag') or info.get('etag') or info.get('mtime') or info.get('LastModified')}"


def _scan_shard(url: str) -> tuple[list[str], list[int], list[int], list[int]]:
    """``(keys, offsets, lengths, labels)`` of one shard's samples, in tar order (label -1: no ``.cls``)."""
    samples: dict[str, list] = {}
    with _open(url) as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            directory, _, name = member.name.rpartition("/")
            stem, dot, ext = name.partition(".")
            if not dot:
                continue
            key = f"{directory}/{stem}" if directory else stem
            entry = samples.setdefault(key, [None, 0, UNLABELLED])
            ext = ext.lower()
            if ext in _IMAGE_EXTS and entry[0] is None:
                entry[0], entry[1] = member.offset_data, member.size
            elif ext == "cls":
                position = f.tell()
                f.seek(member.offset_data)
                entry[2] = int(f.read(member.size).decode().strip())
                f.seek(position)
    kept = [(k, e) for k, e in samples.items() if e[0] is not None]
    return [k for k, _ in kept], [e[0] for _, e in kept], [e[1] for _, e in kept], [e[2] for _, e in kept]


def build_index(urls: list[str], cache_dir: Path, setting: str) -> dict:
    """The split's index (cached on disk by the shards' names, sizes and mtimes / ETags)."""
    stamps = [_stamp(u) for u in urls]
    digest = hashlib.sha256(f"v{INDEX_VERSION}\n".encode() + "\n".join(f"{u}\t{s}" for u, s in zip(urls, stamps))
                            .encode()).hexdigest()[:24]
    cache = cache_dir / "shards" / f"index-{digest}.json"
    try:
        return json.loads(cache.read_text())
    except (OSError, ValueError):
        pass
    index: dict = {"urls": urls, "shard": [], "key": [], "offset": [], "length": [], "label": []}
    with progress_bar(total=len(urls), desc="indexing shards", unit="shard", leave=False, delay=2.0) as bar:
        for s, url in enumerate(urls):
            try:
                keys, offsets, lengths, labels = _scan_shard(url)
            except (OSError, tarfile.TarError, ValueError, UnicodeDecodeError) as err:
                reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
                raise DataError(f"{setting}: shard {url} cannot be read as a tar of samples ({reason})") from err
            index["shard"] += [s] * len(keys)
            index["key"] += keys
            index["offset"] += offsets
            index["length"] += lengths
            index["label"] += labels
            bar.update(1)
    if not index["key"]:
        raise DataError(f"{setting}: the {len(urls)} shard(s) hold no image samples (KEY.jpg / KEY.png members)")
    try:
        atomic_write(cache, lambda tmp: tmp.write_text(json.dumps(index)))
    except OSError:
        pass  # a read-only cache only costs the scan next time
    return index


def _classes(urls: list[str], labels: np.ndarray) -> list[str]:
    """Class names from ``classes.json`` beside the first shard, else ``"0" .. "K-1"``."""
    first = urls[0]
    where = first.rsplit("/", 1)[0] + "/classes.json" if _is_url(first) else str(Path(first).parent / "classes.json")
    try:
        with _open(where) as f:
            names = json.loads(f.read())
        if isinstance(names, list):
            return [str(n) for n in names]
    except (OSError, ValueError, ImportError):
        pass
    top = int(labels.max()) if len(labels) else -1
    return [str(i) for i in range(top + 1)]


# ---------------------------------------------------------------------------------------------
# The split


@dataclass
class ShardSplit(OnDemandSplit):
    """Shards read on demand; the :class:`~selfsup.data.split.Split` protocol, as
    :class:`~selfsup.data.streaming.StreamingImageFolder` (its ``decode`` reads members by offset).

    Attributes:
        root: the pattern the shards came from (what messages name).
        urls: the shard files, in order; ``shard[i]`` indexes it.
        keys: sample keys (``KEY`` of ``KEY.jpg``), for messages.
        shard, offset, length: int64 ``[N]`` each: where sample ``i``'s image bytes are.
        labels: int64 ``[N]`` (``-1`` without ``.cls``); classes: names (``classes.json`` or ``"0"``...).
        image_size: the canvas side S: every image decodes to uint8 ``[3, S, S]``.
        mean, std: per-channel stats of ``images / 255`` over a seeded sample of ``stats_from`` images.
    """

    root: str
    urls: list[str]
    keys: list[str]
    shard: np.ndarray
    offset: np.ndarray
    length: np.ndarray
    labels: torch.Tensor
    classes: list[str]
    image_size: int
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.25, 0.25, 0.25)
    setting: str = "data.train"
    on_bad_file: str = "skip"
    stats_from: int = 0
    workers: int | None = None
    _files: dict = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self) -> dict:  # open files stay in the process that opened them
        return {**self.__dict__, "_files": {}}

    def read(self, i: int) -> bytes:
        """The image bytes of sample ``i`` (one seek and read in its shard; files stay open per process)."""
        s = int(self.shard[i])
        f = self._files.get((os.getpid(), s))  # a forked DataLoader worker must not share the parent's offsets
        if f is None:
            f = self._files[(os.getpid(), s)] = _open(self.urls[s])
        f.seek(int(self.offset[i]))
        return f.read(int(self.length[i]))

    def decode_one(self, i: int) -> torch.Tensor:
        return decode_canvas(self.read(i), self.image_size)

    def sample_name(self, i: int) -> str:
        return self.keys[i]

    def source_line(self) -> str:
        return f"shards {self.setting}={self.root}: {len(self)} images in {len(self.urls)} shard(s) ({JPEG_DECODER})"

    def rows(self, start: int, stop: int) -> ShardSplit:
        return dataclasses.replace(self, keys=self.keys[start:stop], shard=self.shard[start:stop],
                                   offset=self.offset[start:stop], length=self.length[start:stop],
                                   labels=self.labels[start:stop], _files={})

    def fingerprint(self, *, labels: torch.Tensor | None = None, dataset_id: str = "") -> str:
        """sha256 of ``dataset_id``, the canvas, the decoder, each shard's name and stamp, keys and labels."""
        hasher = hashlib.sha256(f"{dataset_id}|{self.image_size}|{JPEG_DECODER}|".encode())
        hasher.update("\n".join(f"{u}\t{_stamp(u)}" for u in self.urls).encode())
        hasher.update("\n".join(self.keys).encode())
        hash_tensor(hasher, "labels", self.labels.long() if labels is None else torch.as_tensor(labels).long())
        return hasher.hexdigest()

    def load(self) -> ImageDataset:
        """The whole split decoded into memory (a thread pool), in index order; unreadable samples
        are left out (one warning, or a DataError with ``on_bad_file=error``)."""
        n, chunk = len(self), 256
        images = torch.empty((n, *self.shape), dtype=torch.uint8)
        bad: list[list[str]] = []

        def work(start: int) -> int:
            part = self.rows(start, min(start + chunk, n))  # its own open files: threads never share one
            for j in range(len(part)):
                try:
                    images[start + j] = decode_canvas(part.read(j), self.image_size)
                except Exception as err:
                    bad.append([part.keys[j], (str(err).strip().splitlines() or [type(err).__name__])[0][:80]])
            return len(part)

        with ThreadPoolExecutor(max_workers=available_cores()) as pool, \
                progress_bar(total=n, desc="decoding shards", unit="img", leave=False, delay=2.0) as bar:
            for done in pool.map(work, range(0, n, chunk)):
                bar.update(done)
        keep = torch.ones(n, dtype=torch.bool)
        if bad:
            if len(bad) == n:
                raise DataError(f"{self.setting}={self.root}: none of its {n} images could be read: {bad[0][0]} "
                                f"({bad[0][1]})")
            report_bad_files(f"{self.setting}={self.root}", sorted(bad), [], self.on_bad_file)
            lost = set(k for k, _ in bad)
            keep = torch.tensor([k not in lost for k in self.keys])
        return make_dataset(images[keep], self.labels[keep], self.classes)

    @classmethod
    def open(cls, pattern: str, *, image_size: int | None, cache_dir: str | os.PathLike[str] | None = None,
             setting: str = "data.train", on_bad_file: str = "skip", workers: int | None = None) -> ShardSplit:
        """Index the shards of ``pattern`` (cached on disk). ``image_size=None``: the first image's side
        (it must be square). ``mean`` / ``std`` are placeholders until :meth:`with_stats` or :meth:`load`."""
        cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        urls = shard_urls(pattern, setting)
        index = build_index(urls, cache, setting)
        labels = np.asarray(index["label"], dtype=np.int64)
        split = cls(pattern, urls, index["key"], np.asarray(index["shard"], dtype=np.int64),
                    np.asarray(index["offset"], dtype=np.int64), np.asarray(index["length"], dtype=np.int64),
                    torch.from_numpy(labels), _classes(urls, labels) if (labels >= 0).any() else [], 1,
                    setting=setting, on_bad_file=on_bad_file, workers=workers)
        split.image_size = image_size if image_size is not None else split._native_side()
        return split

    def with_stats(self, samples: int = 2048, seed: int = 0) -> ShardSplit:
        """Set ``mean`` / ``std`` from a seeded sample of ``samples`` images (all when fewer); returns self."""
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(len(self), size=min(samples, len(self)), replace=False))
        images, _, _ = self.decode(pick.tolist())
        self.mean, self.std = channel_stats(images)
        self.stats_from = len(pick)
        return self

    def _native_side(self) -> int:
        from selfsup.data.decode import decode_rgb

        for i in range(min(len(self), 64)):
            try:
                h, w = decode_rgb(self.read(i)).shape[:2]
            except Exception:
                continue
            if h != w:
                raise DataError(f"{self.setting}={self.root}: sample {self.keys[i]} is {w}x{h}, not square: "
                                "set data.image_size=N")
            return h
        raise DataError(f"{self.setting}={self.root}: none of its first images could be read")


def open_shards(data: DataConfig, split: str, *, seed: int = 0) -> ImageDataset | ShardSplit:
    """``split`` of a ``data.name=shards`` config: in memory when its decoded size is at most
    ``data.in_memory_max_gb`` (and ``data.streaming`` is not ``always``), else streamed.
    ``data.num_samples`` picks the same seeded subset as for other data."""
    pattern, setting = split_pattern(split, data.root, data.train, data.val)
    shards = ShardSplit.open(pattern, image_size=data.image_size, cache_dir=data.cache_dir, setting=setting,
                             on_bad_file=data.on_bad_file, workers=data.workers)
    if data.num_samples is not None and data.num_samples < len(shards):  # as selfsup.data.datasets.subset picks
        pick = torch.randperm(len(shards), generator=torch.Generator().manual_seed(seed))[:data.num_samples]
        pick = pick.sort().values.numpy()
        shards = dataclasses.replace(shards, keys=[shards.keys[i] for i in pick], shard=shards.shard[pick],
                                     offset=shards.offset[pick], length=shards.length[pick],
                                     labels=shards.labels[pick], _files={})
    gb = len(shards) * 3 * shards.image_size**2 / 2**30
    if data.streaming == "always" or (data.streaming == "auto" and gb > data.in_memory_max_gb):
        return shards.with_stats()
    return shards.load()


@register_dataset("shards")
def load_shards_dataset(split: str, *, root: str | None = None, train_path: str | None = None,
                        val_path: str | None = None, image_size: int | None = None, cache_dir: Path,
                        on_bad_file: str = "skip", **_: object) -> ImageDataset:
    """``data.name=shards`` in memory (``load_dataset``); :func:`open_shards` also streams large splits."""
    pattern, key = split_pattern(split, root, train_path, val_path)
    return ShardSplit.open(pattern, image_size=image_size, cache_dir=cache_dir, setting=key,
                           on_bad_file=on_bad_file).load()
