"""Tests for data.name=shards (selfsup.data.shards, selfsup.data.shard_writer): an ImageFolder written
as WebDataset tar shards reads back as the same images, labels and step-keyed batches."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.cli import main
from selfsup.core.errors import DataError
from selfsup.core.files import PathError
from selfsup.data import shard_writer
from selfsup.data.imagefolder import load_imagefolder
from selfsup.data.shard_writer import write_shards
from selfsup.data.shards import ShardSplit, expand_pattern, open_shards
from selfsup.data.step_loader import StepStream, stream_batches
from selfsup.engine.trainer import EpochSampler

SIZE = 8


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """train/ (3 classes x 7 JPEG/PNG images of mixed sizes) and test/ (3 x 2)."""
    root = tmp_path_factory.mktemp("shards") / "folder"
    rng = np.random.default_rng(0)
    sizes = [(12, 12), (20, 14), (9, 16), (32, 32), (8, 8), (15, 11), (40, 30)]
    for split, count in (("train", 7), ("test", 2)):
        for name in ("cat", "dog", "emu"):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                w, h = sizes[i]
                img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
                img.save(root / split / name / f"{i}.{'png' if i == 2 else 'jpg'}", quality=90)
    return root


@pytest.fixture(scope="module")
def out(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out") / "shards"
    assert write_shards(folder, out, shard_size=5, progress=False) == {"train": {"samples": 21, "shards": 5},
                                                                      "test": {"samples": 6, "shards": 2}}
    return out


@pytest.fixture()
def shards(out, tmp_path) -> ShardSplit:
    return ShardSplit.open(str(out / "train-{000000..000004}.tar"), image_size=SIZE, cache_dir=tmp_path)


def _collect(batches) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    return [(step, images.clone(), labels.clone()) for step, images, labels in batches]


def test_writer_makes_webdataset_members_and_classes(out):
    assert sorted(p.name for p in out.iterdir()) == ["classes.json"] + [f"test-00000{i}.tar" for i in range(2)] + \
        [f"train-00000{i}.tar" for i in range(5)]
    with tarfile.open(out / "train-000000.tar") as tar:
        names = tar.getnames()
        assert names[:4] == ["00000000.jpg", "00000000.cls", "00000001.jpg", "00000001.cls"]
        assert tar.extractfile("00000000.cls").read() == b"0"
    assert not list(out.glob(".*"))  # no temporary file left behind


def test_round_trip_same_images_labels_and_classes(shards, folder, out, tmp_path):
    memory = load_imagefolder(folder / "train", image_size=SIZE, cache_dir=tmp_path / "mem")
    loaded = shards.load()
    assert torch.equal(loaded.images, memory.images) and torch.equal(loaded.labels, memory.labels)
    assert shards.classes == memory.classes == ["cat", "dog", "emu"] and len(shards) == 21
    test = ShardSplit.open(str(out / "test-*.tar"), image_size=SIZE, cache_dir=tmp_path)
    assert test.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_native_size_decodes_exactly_as_the_folder(tmp_path):
    root = tmp_path / "sq"
    rng = np.random.default_rng(1)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(root / c / f"{i}.jpg")
    write_shards(root, tmp_path / "o", shard_size=4, progress=False)
    got = ShardSplit.open(str(tmp_path / "o"), image_size=None, cache_dir=tmp_path).load()
    want = load_imagefolder(root, image_size=None, cache_dir=tmp_path / "m")
    assert torch.equal(got.images, want.images) and got.mean == want.mean


def test_batches_follow_the_folder_order_for_the_same_seed(shards, folder, tmp_path):
    memory = load_imagefolder(folder / "train", image_size=SIZE, cache_dir=tmp_path / "mem")
    sampler = EpochSampler(len(shards), 6, seed=3)
    first = _collect(stream_batches(shards, sampler, range(8), num_workers=0))
    again = _collect(stream_batches(shards, EpochSampler(len(shards), 6, seed=3), range(8), num_workers=2))
    for (step, images, labels), (_, images2, labels2) in zip(first, again):
        idx = sampler.indices(step, 0, 1)
        assert torch.equal(images, memory.images[idx]) and torch.equal(labels, memory.labels[idx])
        assert torch.equal(images, images2) and torch.equal(labels, labels2)


def test_resumed_stream_equals_the_uninterrupted_one(shards):
    sampler = EpochSampler(len(shards), 4, seed=5)  # 5 steps per epoch: step 7 is mid-epoch 1
    whole = StepStream(shards, sampler, stop=10, num_workers=2)
    full = [whole.batch(s) for s in range(10)]
    whole.close()
    resumed = StepStream(shards, EpochSampler(len(shards), 4, seed=5), stop=10, num_workers=2)
    for step in range(7, 10):
        images, labels = resumed.batch(step)
        assert torch.equal(images, full[step][0]) and torch.equal(labels, full[step][1])
    resumed.close()


def test_two_processes_read_disjoint_shares_covering_the_epoch(shards):
    sampler = EpochSampler(len(shards), 6, seed=0)  # 3 steps per epoch; 18 of the 21 samples
    seen: list[list[int]] = [[], []]
    for rank in range(2):
        ours = ShardSplit.__new__(ShardSplit)
        ours.__dict__.update(shards.__getstate__())
        read: list[int] = []
        real_read = ours.read
        ours.read = lambda i, real_read=real_read, read=read: (read.append(i), real_read(i))[1]
        for step in range(3):
            ours.batch(sampler.indices(step, rank, 2))
        seen[rank] = read
    assert not set(seen[0]) & set(seen[1])
    epoch = torch.cat([sampler.indices(s, 0, 1) for s in range(3)]).tolist()
    assert sorted(seen[0] + seen[1]) == sorted(epoch) and len(set(epoch)) == 18


def test_open_split_in_memory_and_streamed(out, tmp_path):
    from selfsup.config import load_config
    from selfsup.data import open_split

    cfg = load_config(None, ["data.name=shards", f"data.root={out}", "data.image_size=8", f"data.cache_dir={tmp_path}"])
    train, val = open_split(cfg.data, "train"), open_split(cfg.data, "val")
    assert len(train) == 21 and len(val) == 6 and train.random_access and train.classes == ["cat", "dog", "emu"]
    cfg.data.streaming = "always"
    streamed = open_shards(cfg.data, "train")
    assert isinstance(streamed, ShardSplit) and not streamed.random_access and streamed.stats_from == 21
    assert np.allclose(streamed.mean, train.mean, atol=1e-6)


def test_expand_pattern():
    assert expand_pattern("s3://b/t-{008..011}.tar") == [f"s3://b/t-{i:03d}.tar" for i in range(8, 12)]
    assert expand_pattern("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]


def test_a_failed_write_leaves_no_half_shard(folder, tmp_path, monkeypatch):
    real = shard_writer._write_tar
    calls = []

    def failing(tmp, *args):
        calls.append(tmp)
        if len(calls) == 2:
            tmp.write_bytes(b"half a shard")
            raise OSError("disk full")
        return real(tmp, *args)

    monkeypatch.setattr(shard_writer, "_write_tar", failing)
    with pytest.raises(OSError):
        write_shards(folder / "train", tmp_path / "o", shard_size=5, progress=False)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["classes.json", "train-000000.tar"]


@pytest.mark.parametrize("case, message", [
    ("missing", r"IMAGEFOLDER=.*does not exist"),
    ("empty", r"holds no images"),
    ("unwritable", r"cannot write"),
    ("no shards", r"holds no \.tar shards"),
    ("bad pattern", r"data\.train=.*does not exist"),
])
def test_bad_inputs_are_one_line_errors(case, message, folder, tmp_path, capsys):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "file").write_text("x")
    argv = {"missing": ["data", "shards", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
            "empty": ["data", "shards", str(tmp_path / "empty"), "--out", str(tmp_path / "o")],
            "unwritable": ["data", "shards", str(folder / "test"), "--out", str(tmp_path / "file" / "o")]}
    if case in argv:
        assert main(argv[case]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("selfsup: error:")
        import re

        assert re.search(message, err), err
        return
    with pytest.raises(DataError, match=message):
        ShardSplit.open(str(tmp_path / "empty") if case == "no shards" else str(tmp_path / "x-{0..3}.tar"),
                        image_size=SIZE, cache_dir=tmp_path)


def test_cli_writes_shards(folder, tmp_path, capsys):
    assert main(["data", "shards", str(folder / "test"), "--out", str(tmp_path / "o"), "--shard-size", "4"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").glob("*.tar")) == ["train-000000.tar", "train-000001.tar"]
    with pytest.raises(PathError):
        write_shards(folder / "test", tmp_path / "o" / "train-000000.tar" / "x", progress=False)
