"""The command line (selfsup.cli): end to end on a real slice of the CIFAR-10 JPEG data (imagefolder path),
one-line errors, and what `selfsup list` says (backbone / method compatibility, model_args)."""
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from selfsup import load_encoder
from selfsup.config import resolve_config
from selfsup.core.errors import ConfigError
from selfsup.data.augment import ViewMaker
from selfsup.models.backbones import create_backbone
from selfsup.runs.open_run import open_encoder
from support import CIFAR_ZIP


@pytest.fixture(scope="module")
def cifar_slice(tmp_path_factory) -> Path:
    """The first 12 training and 6 test images of every class, unzipped."""
    if not CIFAR_ZIP.is_file():
        pytest.skip(f"{CIFAR_ZIP} not found (it lives in ../shared/data beside the clone)")
    root = tmp_path_factory.mktemp("cifar")
    per_class = {"train": 12, "test": 6}
    taken: dict[tuple[str, str], int] = {}
    with zipfile.ZipFile(CIFAR_ZIP) as archive:
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


@pytest.mark.slow
def test_train_eval_export_on_cifar_jpeg_slice(cifar_slice, tmp_path):
    run = tmp_path / "run"
    data = [f"data.name=imagefolder", f"data.train={cifar_slice / 'train'}", f"data.val={cifar_slice / 'test'}",
            f"data.cache_dir={tmp_path / 'cache'}"]
    selfsup("train", "recipes/simclr-cifar10.yaml", *data, "backbone.name=test_resnet", "method.proj_hidden_dim=64",
            "trainer.batch_size=40", "trainer.epochs=2", "trainer.log_every=1", f"run.dir={run}", "eval.linear=false",
            "run.plots=false", "run.tensorboard=false")  # nothing below reads them (tests/evaluation/test_plots.py does)
    evaluated = json.loads((run / "eval.json").read_text())
    assert 0.0 <= evaluated["knn_k20"]["top1"] <= 1.0 and "knn_k120" in evaluated  # k=200 > 120 images: k=120
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


# ----------------------------------------------------------------------------- which backbone runs which method


def one_step_loss(method_name: str, backbone: torch.nn.Module, size: int = 32) -> torch.Tensor:
    from selfsup.methods import create_method

    method = create_method(method_name, backbone, image_size=size, num_classes=4).train()
    images = torch.randint(0, 256, (8, 3, size, size), dtype=torch.uint8)
    views = ViewMaker(method.views, mean=(0.5,) * 3, std=(0.25,) * 3)(images, torch.Generator().manual_seed(0))
    values = {"lr": 0.1, "weight_decay": 0.0,
              **{k: float(v[0]) for k, v in method.schedules(total_steps=10, steps_per_epoch=5).items()}}
    return method(views, torch.randint(0, 4, (8,)), values)["loss"]


@pytest.mark.usefixtures("one_thread")
def test_selfsup_list_compatibility_claims_hold_for_every_method():
    """`selfsup list`: sequence backbones run every method except those that declare ``multi_size``,
    which fail with a clear error; a ViT with dynamic_img_size runs every method."""
    from selfsup.methods import METHODS

    vit_args = dict(img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2, dynamic_img_size=True,
                    dynamic_img_pad=True)
    for name in METHODS.names():
        torch.manual_seed(0)
        lstm = create_backbone("lstm", img_size=32, hidden_size=8)
        if METHODS.get(name).needs_vit:  # MAE, iBOT, I-JEPA: refused on anything but a ViT, in one line
            with pytest.raises(ConfigError, match="needs a ViT backbone"):
                one_step_loss(name, lstm)
        elif METHODS.get(name).multi_size:
            with pytest.raises(ValueError, match="built for"):
                one_step_loss(name, lstm)
        else:
            assert torch.isfinite(one_step_loss(name, lstm)), name
        assert torch.isfinite(one_step_loss(name, create_backbone("vit_tiny_patch16_224", **vit_args))), name


@pytest.mark.usefixtures("one_thread")
def test_model_args_config_key_and_list_output(capsys):
    raw = {"backbone": {"name": "lstm", "model_args": {"hidden_size": 32, "bidirectional": True}}}
    cfg = resolve_config(raw, ["backbone.model_args.num_layers=2"])
    assert cfg.backbone.model_args == {"hidden_size": 32, "bidirectional": True, "num_layers": 2}
    with pytest.raises(ConfigError, match="mapping"):
        resolve_config({"backbone": {"model_args": [1, 2]}})
    from selfsup.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "supervised" in out and "lstm, gru, seq_transformer   every method except dino, " in out
    assert "sequence" in out.split("datasets:")[1].split("backbones:")[0]
