"""Files and folders a run cannot write or read (issue 16): files follow the umask, and a read-only run, a
file in the way or another user's export is one line naming the path (exit 2) -- except ``selfsup eval``,
which prints its result and warns about what it could not save (exit 0)."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from selfsup.cli import main
from selfsup.config import load_config
from selfsup.core.files import PathError
from selfsup.runs.evaluate import evaluate_run
from selfsup.runs.export import export_as, load_encoder
from selfsup.runs.open_run import open_encoder
from selfsup.runs.train import train
from support import TINY
from support.permissions import as_other_user, make_read_only, shared_tmp

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def written():
    """Under umask 022: a tiny run (with its end-of-training kNN), its export, and the export's evaluation,
    in a folder another user can reach: ``(root, run, export, cache)``."""
    old = os.umask(0o022)
    try:
        with shared_tmp() as root:
            run, export, cache = root / "run", root / "export", root / "cache"
            train(load_config("simclr-digits", [*TINY, f"run.dir={run}", "eval.at_end=true", "eval.linear=false",
                                                "run.plots=false", "run.tensorboard=false", "trainer.epochs=1",
                                                "trainer.warmup_epochs=0"]))
            encoder, cfg, _ = open_encoder(run)
            export_as(encoder, export, "safetensors", method=cfg.method.name, recipe=cfg)
            evaluate_run(export, "knn", [f"data.cache_dir={cache}"])
            yield root, run, export, cache
    finally:
        os.umask(old)


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("selfsup: error: ") and len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_every_file_of_a_run_an_export_and_an_evaluation_follows_the_umask(written):
    root, run, export, cache = written
    files = [p for folder in (run, export, cache) for p in folder.rglob("*") if p.is_file()]
    assert {p.relative_to(root).as_posix().split("/")[1] for p in files if p.is_relative_to(run)} >= {
        "config.yaml", "metrics.jsonl", "checkpoints", "encoder", "features", "eval.json", "summary.json"}
    assert any(p.parent == cache / "features" for p in files) and (export / "eval.json").is_file()
    modes = {p.relative_to(root).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o644"}, modes
    folders = [p for folder in (run, export, cache) for p in [folder, *folder.rglob("*")] if p.is_dir()]
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in folders} == {"0o755"}


def test_another_users_private_export_is_a_permission_error(written, capsys):
    _, run, _, _ = written
    weights = run / "encoder" / "model.safetensors"
    weights.chmod(0o600 if os.geteuid() == 0 else 0o000)  # root tests as nobody: root's 0600 file is another's
    try:
        with as_other_user():
            if os.access(weights, os.R_OK, effective_ids=os.access in os.supports_effective_ids):
                pytest.skip("this process reads unreadable files (a non-root user who bypasses permissions)")
            with pytest.raises(PathError, match=f"^cannot read {weights}: permission denied$"):
                load_encoder(run / "encoder")
            assert _one_line_error(capsys, ["eval", str(run / "encoder"), "--protocol", "knn"]).endswith(
                f"cannot read {weights}: permission denied")
    finally:
        weights.chmod(0o644)


def test_a_file_in_the_way_of_run_dir_or_export_out_is_one_line(written, tmp_path, capsys):
    _, run, _, _ = written
    (tmp_path / "afile").write_text("x")
    err = _one_line_error(capsys, ["train", "simclr-digits", *TINY, f"run.dir={tmp_path}/afile/sub"])
    assert err == f"selfsup: error: cannot write run.dir={tmp_path}/afile/sub: {tmp_path}/afile is a file, not a folder"
    err = _one_line_error(capsys, ["export", str(run), "--out", f"{tmp_path}/afile/sub"])
    assert err == f"selfsup: error: cannot write {tmp_path}/afile/sub: {tmp_path}/afile is a file, not a folder"


def test_read_only_run_eval_prints_its_result_and_train_export_plot_refuse(written, capsys):
    root, run, _, _ = written
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    make_read_only(run)
    try:
        with as_other_user():
            with pytest.warns(UserWarning) as caught:
                assert main(["eval", str(run), "--protocol", "knn"]) == 0
            out = capsys.readouterr().out
            assert 0.0 <= json.loads(out.strip().splitlines()[-1])["knn_k20"]["top1"] <= 1.0
            messages = [str(w.message) for w in caught if "cannot write" in str(w.message)]
            assert messages == [f"cannot write {run}: permission denied; the results are only printed "
                                "(no eval.json, plots or feature cache there)"]
            err = _one_line_error(capsys, ["train", "simclr-digits", *TINY, f"run.dir={run}"])
            assert err == f"selfsup: error: cannot write run.dir={run}: permission denied"
            err = _one_line_error(capsys, ["export", str(run), "--out", str(run / "exported")])
            assert err.startswith(f"selfsup: error: cannot write {run / 'exported'}: permission denied")
            pytest.importorskip("matplotlib")
            err = _one_line_error(capsys, ["plot", str(run)])
            assert err == f"selfsup: error: cannot write {run / 'plots'}: permission denied"
    finally:
        for p in [run, *run.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # nothing was written
