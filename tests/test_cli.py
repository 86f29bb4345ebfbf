"""End to end through the CLI on a real slice of the CIFAR-10 JPEG data (imagefolder path)."""
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from selfsup import load_encoder
from selfsup.runs.open_run import open_encoder

ZIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.zip"


@pytest.fixture(scope="module")
def cifar_slice(tmp_path_factory) -> Path:
    """The first 12 training and 6 test images of every class, unzipped."""
    if not ZIP.is_file():
        pytest.skip(f"{ZIP} not found (it lives in ../shared/data beside the clone)")
    root = tmp_path_factory.mktemp("cifar")
    per_class = {"train": 12, "test": 6}
    taken: dict[tuple[str, str], int] = {}
    with zipfile.ZipFile(ZIP) as archive:
        for name in archive.namelist():
            parts = Path(name).parts[-3:]
            if len(parts) != 3 or not name.endswith(".jpg") or parts[0] not in per_class:
                continue
            key = (parts[0], parts[1])
            if taken.get(key, 0) < per_class[parts[0]]:
                taken[key] = taken.get(key, 0) + 1
                target = root / Path(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(name))
    return root


def selfsup(*args, expect=0):
    proc = subprocess.run([sys.executable, "-m", "selfsup", *map(str, args)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == expect, proc.stderr[-3000:]
    return proc


def test_train_eval_export_on_cifar_jpeg_slice(cifar_slice, tmp_path):
    run = tmp_path / "run"
    data = [f"data.name=imagefolder", f"data.train={cifar_slice / 'train'}", f"data.val={cifar_slice / 'test'}",
            f"data.cache_dir={tmp_path / 'cache'}"]
    selfsup("train", "recipes/simclr-cifar10.yaml", *data, "backbone.name=test_resnet", "method.proj_hidden_dim=64",
            "trainer.batch_size=40", "trainer.epochs=2", "trainer.log_every=1", f"run.dir={run}", "eval.linear=false")
    evaluated = json.loads((run / "eval.json").read_text())
    assert 0.0 <= evaluated["knn_k20"]["top1"] <= 1.0 and "knn_k200" in evaluated
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 6  # 120 images // 40 x 2 epochs

    printed = json.loads(selfsup("eval", run, "--protocol", "knn").stdout.strip().splitlines()[-1])
    assert printed["knn_k20"]["top1"] == pytest.approx(evaluated["knn_k20"]["top1"])

    out = tmp_path / "exported"
    selfsup("export", run, "--out", out, "--format", "torchscript")
    encoder, _, _ = open_encoder(run)
    exported = load_encoder(out)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(exported(x), encoder(x))
        assert torch.allclose(torch.jit.load(str(out / "encoder.pt"))(x), encoder(x), atol=1e-5)
    assert json.loads((out / "config.json").read_text())["selfsup"]["method"] == "simclr"


def test_missing_imagefolder_path_is_one_line_exit_2(tmp_path):
    proc = selfsup("train", "recipes/simclr-cifar10.yaml", "data.name=imagefolder", f"data.train={tmp_path / 'nope'}",
                   f"data.val={tmp_path / 'nope'}", f"run.dir={tmp_path / 'run'}", expect=2)
    assert proc.stderr.startswith("selfsup: error:") and str(tmp_path / "nope") in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_list_shows_methods_datasets_recipes():
    out = selfsup("list").stdout
    assert "simclr" in out and "imagefolder" in out and "simclr-digits" in out
