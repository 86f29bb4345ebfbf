"""Pretraining on unlabelled images (issue 16, point 4): ``data.name=imagefolder data.train=FLATDIR``, a folder
of images without class sub-folders, pretrains and exports; whatever needs labels says so in one line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selfsup.cli import main

RUN = ["backbone.name=test_resnet", "backbone.small_stem=true", "method.proj_hidden_dim=32", "method.proj_dim=16",
       "trainer.batch_size=8", "trainer.epochs=1", "trainer.warmup_epochs=0", "trainer.max_steps=2",
       "trainer.log_every=1", "run.plots=false", "run.tensorboard=false", "eval.random_baseline=false"]


@pytest.fixture(scope="module")
def flat(tmp_path_factory) -> Path:
    """40 small images (PNG and JPEG) straight in one folder: no class sub-folders."""
    root = tmp_path_factory.mktemp("flat") / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"img{i:02d}.{'png' if i % 2 else 'jpg'}")
    return root


def _train(tmp_path, flat, *extra) -> list[str]:
    return ["train", "simclr-digits", "data.name=imagefolder", f"data.train={flat}",
            f"data.cache_dir={tmp_path / 'cache'}", f"run.dir={tmp_path / 'run'}", *RUN, *extra]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("selfsup: error:")]
    assert len(errors) == 1, err
    return errors[0]


def test_flat_folder_pretrains_and_exports_with_the_online_monitor_told(tmp_path, flat, recwarn):
    assert main(_train(tmp_path, flat, "eval.at_end=false")) == 0
    assert (tmp_path / "run" / "encoder" / "model.safetensors").is_file()
    notices = [str(w.message) for w in recwarn if "no labels" in str(w.message)]
    assert len(notices) == 1 and "online kNN" in notices[0], notices  # the label-free collapse indicators stay on
    rows = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "effective_rank" in rows and "online_linear" not in rows and "knn_online" not in rows


def test_flat_folder_pretrains_streamed_too(tmp_path, flat):
    assert main(_train(tmp_path, flat, "eval.at_end=false", "data.streaming=always", "data.workers=0")) == 0
    assert (tmp_path / "run" / "encoder" / "model.safetensors").is_file()


def test_evaluation_at_the_end_is_refused_in_one_line_before_training(tmp_path, flat, capsys):
    assert main(_train(tmp_path, flat, "eval.at_end=true")) == 2
    line = _one_error_line(capsys)
    assert "no class sub-folders" in line and "eval.at_end=false" in line
    assert not (tmp_path / "run").exists()  # refused before anything was decoded or trained


def test_flat_val_folder_is_refused_for_the_evaluation(tmp_path, flat, capsys):
    labelled = tmp_path / "labelled"
    for name in ("a", "b"):
        (labelled / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((16, 16, 3), 60 * i, np.uint8)).save(labelled / name / f"{i}.png")
    assert main(["train", "simclr-digits", "data.name=imagefolder", f"data.train={labelled}", f"data.val={flat}",
                 f"data.cache_dir={tmp_path / 'cache'}", f"run.dir={tmp_path / 'run'}", *RUN]) == 2
    line = _one_error_line(capsys)
    assert "data.val=" in line and "no class sub-folders" in line


def test_a_label_trained_method_refuses_a_flat_folder_in_one_line(tmp_path, flat, capsys):
    assert main(["train", "supervised-digits", "data.name=imagefolder", f"data.train={flat}",
                 f"data.cache_dir={tmp_path / 'cache'}", f"run.dir={tmp_path / 'run'}", "backbone.name=test_resnet",
                 "trainer.batch_size=8", "trainer.max_steps=2", "eval.at_end=false", "run.plots=false",
                 "run.tensorboard=false"]) == 2
    line = _one_error_line(capsys)
    assert "method.name=supervised" in line and "labels" in line


def test_selfsup_eval_of_an_unlabelled_run_is_refused_in_one_line(tmp_path, flat, capsys):
    assert main(_train(tmp_path, flat, "eval.at_end=false")) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--protocol", "knn", f"data.val={flat}"]) == 2
    line = _one_error_line(capsys)
    assert "labelled" in line and "class sub-folders" in line
