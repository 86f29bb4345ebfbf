"""``backbone.init_from`` (selfsup.engine.init_from): a new run starts from a finished run's encoder, run
directory or checkpoint with exactly its backbone weights; config.yaml and the export record the file read
and its sha256; another architecture, a missing path or changed weights are one-line errors (exit 2)."""
import hashlib
import json

import pytest
import torch
import yaml

from selfsup.cli import main
from selfsup.config import load_config
from selfsup.data import open_split
from selfsup.engine.build import build_method
from selfsup.runs.export import load_encoder
from selfsup.runs.train import train
from support import TINY, assert_same_tensors, tiny_config

QUIET = ["run.plots=false", "run.tensorboard=false"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A finished 2-step run: its encoder/, checkpoint and sha256 of the export's weights."""
    run = tmp_path_factory.mktemp("source")
    train(tiny_config(run, "trainer.max_steps=2", *QUIET))
    return run


def started_from(cfg):
    return build_method(cfg, open_split(cfg.data, "train", seed=cfg.trainer.seed))


@pytest.mark.parametrize("where", ["encoder", "run", "checkpoint", "weights file"])
def test_a_new_run_starts_with_the_source_encoder_weights(source, tmp_path, where):
    path = {"encoder": source / "encoder", "run": source, "weights file": source / "encoder" / "model.safetensors",
            "checkpoint": source / "checkpoints" / "step-00000002.pt"}[where]
    cfg = tiny_config(tmp_path, f"backbone.init_from={path}", "trainer.seed=7")  # another seed: no coincidence
    method = started_from(cfg)
    expected = load_encoder(source / "encoder").state_dict()
    assert_same_tensors(method.backbone.state_dict(), expected)
    read = source / ("checkpoints/step-00000002.pt" if where == "checkpoint" else "encoder/model.safetensors")
    assert cfg.backbone.init_from == str(read.resolve())
    assert cfg.backbone.init_sha256 == hashlib.sha256(read.read_bytes()).hexdigest()
    random = started_from(tiny_config(tmp_path, "trainer.seed=7"))  # without init_from: other weights
    assert not torch.equal(random.backbone.state_dict()["conv1.0.weight"], expected["conv1.0.weight"])


def test_an_ema_teacher_starts_from_the_same_weights(source, tmp_path):
    cfg = load_config("byol-digits", [*TINY, "method.pred_hidden_dim=32", f"run.dir={tmp_path}",
                                      f"backbone.init_from={source}"])
    method = started_from(cfg)
    expected = load_encoder(source / "encoder").state_dict()
    assert_same_tensors(method.backbone.state_dict(), expected)
    assert_same_tensors(method.target_backbone.state_dict(), expected)


def test_the_source_is_recorded_in_config_and_export_and_the_run_reruns(source, tmp_path, capsys):
    args = ["train", "simclr-digits", *TINY, *QUIET, f"run.dir={tmp_path}", "trainer.max_steps=1",
            f"backbone.init_from={source}"]
    assert main(args) == 0
    weights = source / "encoder" / "model.safetensors"
    recorded = {"init_from": str(weights.resolve()), "init_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())["backbone"]
    export = json.loads((tmp_path / "encoder" / "config.json").read_text())["selfsup"]["recipe"]["backbone"]
    assert {k: config[k] for k in recorded} == recorded == {k: export[k] for k in recorded}
    capsys.readouterr()
    assert main(args) == 0 and "training already finished at step 1" in capsys.readouterr().out
    code = main([*args, "backbone.init_sha256=" + "f" * 64])  # insisting on other weights than those there
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not backbone.init_sha256=ffff" in err, err


@pytest.mark.parametrize("override,message", [
    ("backbone.init_from={missing}", "backbone.init_from={missing} does not exist"),
    ("backbone.small_stem=false", "holds a test_resnet encoder with the small stem, this run builds test_resnet "
                                  "with the standard stem"),
    ("backbone.name=resnet10t", "holds a test_resnet encoder with the small stem, this run builds resnet10t"),
    ("data.name=digits", "do not fit backbone test_resnet (conv1.0.weight is [16, 3, 3, 3] there, [16, 1, 3, 3] here)"),
])
def test_another_architecture_or_a_missing_path_is_one_line(source, tmp_path, override, message, capsys):
    missing = tmp_path / "no-such-run"
    run = tmp_path / "new"
    tiny = [a for a in TINY if not a.startswith(("data.num_", "data.name"))] if "digits" in override else TINY
    code = main(["train", "simclr-digits", *tiny, *QUIET, f"run.dir={run}", f"backbone.init_from={source}",
                 override.format(missing=missing)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert message.format(missing=missing) in err, err
    assert not run.exists()  # refused before the run directory is made


def test_a_checkpoint_gives_the_encoder_the_run_exports(source, tmp_path):
    """A checkpoint names its exported encoder's prefix (meta.encoder): DINO's teacher, not the student."""
    from selfsup.config import BackboneConfig
    from selfsup.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint
    from selfsup.engine.init_from import load_init_weights
    from selfsup.models.backbones import create_backbone

    assert load_checkpoint(source / "checkpoints" / "step-00000002.pt")["meta"]["encoder"] == "backbone"
    teacher, student = (create_backbone("test_resnet", small_stem=True).state_dict() for _ in range(2))
    model = {**{f"teacher_backbone.{k}": v for k, v in teacher.items()}, **{f"backbone.{k}": v for k, v in student.items()}}
    meta = {"encoder": "teacher_backbone", "backbone": "test_resnet", "small_stem": True}
    path = save_checkpoint(tmp_path, 5, {"step": 5, "model": model, "optimizer": {}, "rng": rng_state(), "meta": meta}, 0)
    backbone = create_backbone("test_resnet", small_stem=True)
    assert load_init_weights(backbone, BackboneConfig(init_from=str(path)))[0] == str(path.resolve())
    assert_same_tensors(backbone.state_dict(), teacher)
