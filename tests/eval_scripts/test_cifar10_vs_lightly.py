"""eval/scripts/cifar10_vs_lightly.py in its tiny mode: both sides of three representative methods (a
contrastive pair, a momentum teacher with a predictor, DINO's view list) train, evaluate and append a
row; ``--table`` turns the rows into the markdown table."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

import torch
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "eval" / "scripts" / "cifar10_vs_lightly.py"


def _script():
    spec = importlib.util.spec_from_file_location("cifar10_vs_lightly", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A 2-class ImageFolder of 32x32 JPEGs (10 per class and split), the class in the mean colour."""
    root = tmp_path_factory.mktemp("tiny-cifar")
    gen = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for label, name in enumerate(("cat", "ship")):
            (root / split / name).mkdir(parents=True)
            for i in range(10):
                pixels = torch.rand(32, 32, 3, generator=gen) * 128 + torch.tensor([96.0, 0, 0]).roll(label)
                Image.fromarray(pixels.clamp(0, 255).byte().numpy()).save(root / split / name / f"{i:04d}.jpg")
    return root


@pytest.mark.slow
def test_both_sides_of_three_methods_append_rows_and_the_table_reads_them(folder, tmp_path, capsys):
    pytest.importorskip("lightly")  # the bench extra
    script, out = _script(), tmp_path / "rows.jsonl"
    methods = ("simclr", "byol", "dino")
    for method in methods:
        for side in ("ours", "lightly"):
            argv = [method, "--side", side, "--train", str(folder / "train"), "--val", str(folder / "test"),
                    "--epochs", "1", "--batch-size", "8", "--workers", "0", "--log-every", "1",
                    "--run-dir", str(tmp_path / f"run-{method}"), "--out", str(out)]
            assert script.main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["method"], r["side"]) for r in rows] == [(m, s) for m in methods for s in ("ours", "lightly")]
    for r in rows:
        assert r["steps"] == 2 and r["epochs"] == 1 and r["loss_finite"], r
        assert all(0.0 <= r[k] <= 1.0 for k in ("knn_k20", "linear")) and r["knn_k200"] is None, r  # 20 images < 200
        assert math.isfinite(r["images_per_s"]) and r["command"] and r["hparams"]
    assert rows[1]["hparams"]["source"].endswith("cifar10_benchmark.py")
    assert rows[0]["shortening"] == ["trainer.warmup_epochs=0.05"]  # 10 of 200 epochs -> 1 of 20 of one epoch
    assert "method.warmup_teacher_temp_epochs=0.15" in rows[4]["shortening"]
    capsys.readouterr()
    assert script.main(["--table", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| method | ours") and len(lines) == 2 + len(methods)
    assert all(line.startswith(f"| {m} |") and line.rstrip().endswith("|") for m, line in zip(methods, lines[2:]))


def test_table_of_handwritten_rows_averages_seeds_and_shows_the_gap(tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    row = lambda side, seed, v: {"method": "moco", "side": side, "seed": seed,  # noqa: E731
                                 "knn_k20": v, "knn_k200": v, "linear": v}
    out.write_text("\n".join(json.dumps(r) for r in (row("ours", 0, 0.5), row("ours", 1, 0.6), row("lightly", 0, 0.4))))
    assert _script().main(["--table", str(out)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line == "| moco | 55.0 / 55.0 / 55.0 | 40.0 / 40.0 / 40.0 | 0,1; 0 | +15.0 / +15.0 |"


def test_random_side_evaluates_the_untrained_network_and_heads_the_table(folder, tmp_path, capsys):
    pytest.importorskip("lightly")  # the script refuses to run without the bench extra
    script, out = _script(), tmp_path / "rows.jsonl"
    argv = ["--side", "random", "--train", str(folder / "train"), "--val", str(folder / "test"), "--out", str(out)]
    assert script.main(argv) == 0 and script.main(argv) == 0  # same seed: the same network, the same numbers
    first, second = [json.loads(line) for line in out.read_text().splitlines()]
    assert first["method"] == "random" and first["steps"] == 0 and first["images_per_s"] is None
    assert 0.0 <= first["linear"] <= 1.0 and first["knn_k20"] == second["knn_k20"]
    capsys.readouterr()
    assert script.main(["--table", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[2].startswith("| random init (torchvision), no training |")
    with pytest.raises(SystemExit):
        script.main(["simclr", "--side", "random"])  # a method with the untrained network is a usage error
