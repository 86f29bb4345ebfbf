"""Re-running ``selfsup train`` on an existing run (selfsup.config.changes, Trainer._check_same_settings):
a changed setting is refused in one line naming every changed key as old -> new (exit 2) and leaves every
file of the run byte-identical; the same settings (and the keys free on resume) still resume or report
"training already finished"."""
import hashlib

import pytest

from selfsup.cli import main
from selfsup.config import config_to_dict, load_config
from selfsup.config.changes import free_on_resume, resume_changes, with_defaults
from selfsup.runs.export import load_encoder
from support import TINY

QUIET = ["run.plots=false", "run.tensorboard=false"]


def snapshot(run):
    """sha256 of every file in the run directory, by relative path."""
    return {p.relative_to(run).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file()}


def train(run, *extra):
    return main(["train", "simclr-digits", *TINY, *QUIET, f"run.dir={run}", *extra])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run that stopped at trainer.max_steps=2 of its 8 steps: finished with max_steps=2, resumable without."""
    run = tmp_path_factory.mktemp("finished")
    assert train(run, "trainer.max_steps=2") == 0
    return run


def test_changed_settings_on_a_finished_run_are_refused_and_nothing_changes(finished, capsys):
    before = snapshot(finished)
    capsys.readouterr()
    code = train(finished, "trainer.max_steps=2", "trainer.lr=5.0", "method.temperature=0.9", "data.image_size=12")
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for change in ("data.image_size 16 -> 12", "method.temperature 0.2 -> 0.9", "trainer.lr 0.5 -> 5.0"):
        assert change in err, err
    assert snapshot(finished) == before  # config.yaml, encoder/*, metrics, checkpoints, summary
    assert load_encoder(finished / "encoder").preprocess.input_size == (3, 16, 16)


@pytest.mark.parametrize("override,named", [
    ("trainer.lr=5.0", "trainer.lr 0.5 -> 5.0"),
    ("eval.online=false", "eval.online true -> false"),  # the monitor shapes metrics.jsonl's rows
    ("backbone.model_args.drop_rate=0.1", "backbone.model_args.drop_rate (unset) -> 0.1"),
    ("trainer.epochs=3", "total_steps=8, this run has total_steps=12"),  # the schedule: refused as before
])
def test_changed_settings_on_a_resumable_run_are_refused(finished, override, named, capsys):
    before = snapshot(finished)
    capsys.readouterr()
    code = train(finished, override)  # without max_steps=2 the run would continue to step 8
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and named in err, err
    assert snapshot(finished) == before


def test_same_settings_and_free_keys_still_rerun(finished, capsys):
    """eval.*, run.*, and how often files are written may differ: the finished run is not trained again,
    its checkpoints, metrics and weights stay, and config.yaml records the new evaluation settings."""
    kept = {k: v for k, v in snapshot(finished).items() if k.startswith("checkpoints/") or k in (
        "metrics.jsonl", "encoder/model.safetensors")}
    capsys.readouterr()
    assert train(finished, "trainer.max_steps=2", "eval.knn_k=[3]", "trainer.checkpoint_every=7",
                 "trainer.log_every=2") == 0
    assert "training already finished at step 2" in capsys.readouterr().out
    after = snapshot(finished)
    assert {k: after[k] for k in kept} == kept
    assert "knn_k:\n  - 3\n" in (finished / "config.yaml").read_text()
    assert train(finished, "trainer.max_steps=2", "eval.knn_k=[3]") == 0  # the same settings again


def test_the_rule_for_keys_free_on_resume():
    free = ["run.dir", "run.plots", "resume", "recipe", "eval.knn_k", "eval.finetune.lr", "trainer.max_steps",
            "trainer.checkpoint_every", "trainer.log_every", "trainer.nonfinite", "data.cache_dir"]
    fixed = ["eval.online", "eval.online_every", "trainer.lr", "trainer.epochs", "trainer.seed", "data.image_size",
             "data.train", "method.temperature", "backbone.name", "backbone.init_from"]
    assert all(free_on_resume(k) for k in free) and not any(free_on_resume(k) for k in fixed)
    old = {"method": {"name": "simclr", "temperature": 0.2}, "backbone": {"model_args": {}}, "trainer": {"lr": 1},
           "eval": {"knn_k": [20]}, "run": {"dir": "a"}}
    new = {"method": {"name": "simclr", "temperature": 0.5}, "backbone": {"model_args": {"x": [1, 2]}},
           "trainer": {"lr": 1.0}, "eval": {"knn_k": (3,)}, "run": {"dir": "b"}}
    assert resume_changes(old, new) == ["backbone.model_args.x (unset) -> [1, 2]", "method.temperature 0.2 -> 0.5"]
    assert resume_changes(old, old) == []
    full = config_to_dict(load_config("simclr-digits"))  # a config recorded before backbone.init_from existed
    recorded = {**full, "backbone": {k: v for k, v in full["backbone"].items() if not k.startswith("init_")}}
    assert resume_changes(recorded, full) == ["backbone.init_from (unset) -> null", "backbone.init_sha256 (unset) -> null"]
    assert resume_changes(with_defaults(recorded), full) == []  # keys added since then take their defaults
