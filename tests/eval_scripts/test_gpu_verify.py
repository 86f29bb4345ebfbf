"""eval/scripts/gpu_verify.sh in its CPU dry run: every part runs and reports numbers, so the GPU
script cannot rot between the rare runs on a lent GPU."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH_KEYS = ("images_per_s", "model_only_images_per_s", "ratio", "augment_share")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.slow
def test_dry_run_reports_every_part_with_numbers(tmp_path):
    out = tmp_path / "verify.json"
    env = {**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable}
    proc = subprocess.run([str(ROOT / "eval/scripts/gpu_verify.sh"), str(out), "--work", str(tmp_path / "work")],
                          env=env, capture_output=True, text=True, timeout=1500, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    parts = report["parts"]
    lightly = importlib.util.find_spec("lightly") is not None
    expected = ["env", "cuda_tests", "data", *(f"bench_{m}_{c}" for m in ("simclr", "dino", "moco")
                                               for c in ("eager", "compile")), "lightly_simclr", "train_simclr"]
    assert list(parts) == expected
    assert report["dry_run"] is True and _number(report["total_wall_s"])
    for name, part in parts.items():
        assert _number(part["wall_s"]), name
        assert "command" not in part or _number(part["cpu_s"]), name  # every subprocess part: its CPU seconds
        if name == "lightly_simclr" and not lightly:
            assert part["status"] == "skipped" and "lightly" in part["error"]
            continue
        assert part["status"] == "ok", (name, part.get("error"))
    assert parts["env"]["result"]["cuda"] is False
    assert parts["cuda_tests"]["result"]["tests"] >= 1
    assert all(_number(v) for v in parts["cuda_tests"]["result"].values())
    assert parts["data"]["result"]["images"] > 0
    for method in ("simclr", "dino", "moco"):
        for mode in ("eager", "compile"):
            result = parts[f"bench_{method}_{mode}"]["result"]
            assert result["method"] == method and result["precision"] == "bf16"
            assert all(_number(result[k]) and result[k] > 0 for k in BENCH_KEYS), (method, mode, result)
    if lightly:
        result = parts["lightly_simclr"]["result"]
        assert all(_number(result[k]) and result[k] > 0
                   for k in ("lightly_images_per_s", "ours_images_per_s", "ours_over_lightly")), result
    train = parts["train_simclr"]["result"]
    assert train["steps_logged"] >= 1 and train["max_steps"] >= 1 and train["epochs"] >= 1
    knn = {k: v for k, v in train.items() if k.startswith("knn_k")}  # k=200 above a dry run's images: knn_k<N>
    assert 0 <= train["knn_k20"] <= 1 and len(knn) == 2 and all(0 <= v <= 1 for v in knn.values()), knn
