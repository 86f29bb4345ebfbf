"""`selfsup bench` smoke test: it runs and reports what DESIGN.md promises (no timing assertions)."""
import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_reports_rates_ratio_and_augment_share():
    proc = subprocess.run(
        [sys.executable, "-m", "selfsup", "bench", "data.name=synthetic", "data.num_samples=64", "data.image_size=16",
         "backbone.name=test_resnet", "method.proj_hidden_dim=32", "trainer.batch_size=16",
         "--steps", "1", "--warmup", "1", "--rounds", "1"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("images_per_s", "model_only_images_per_s", "ratio", "augment_share", "peak_memory_mb"):
        assert result[key] > 0, key
    assert result["ratio"] == pytest.approx(result["images_per_s"] / result["model_only_images_per_s"])
    assert result["batch_size"] == 16 and result["method"] == "simclr"
