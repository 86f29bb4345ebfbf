"""eval/scripts/decode_bench.py in a tiny mode: every pipeline decodes the generated photos and the
table names the command, the machine and a rate for each row."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "eval" / "scripts" / "decode_bench.py"


def _script():
    spec = importlib.util.spec_from_file_location("decode_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_tiny_run_writes_the_table(tmp_path):
    out = tmp_path / "bench.md"
    results = _script().main(["--images", "4", "--rounds", "1", "--size", "64", "--out", str(out)])
    text = out.read_text()
    assert "- command: `" in text and "- machine: " in text and "- date: " in text
    assert len(results) >= 3 and all(cpu > 0 and wall > 0 for cpu, wall in results.values())
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == len(results) and rows[0].split("|")[3].strip() == "1.00"


def test_photos_are_imagenet_sized_jpegs(tmp_path):
    from PIL import Image

    paths = _script().make_photos(tmp_path, 2)
    with Image.open(paths[0]) as img:
        assert img.format == "JPEG" and img.size == (500, 375)
