"""Benchmark runner (selfsup.benchmarks.suites): end to end on digits with tiny settings, reuse of run
directories and results, the mean +- std table, and the packaged protocol / suite files
(selfsup/benchmarks/{protocols,suites}, linked from eval/)."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml

from selfsup.benchmarks.suites import (
    PROTOCOLS_DIR,
    SUITES_DIR,
    find_suite,
    load_protocol,
    load_suite,
    packaged_names,
    reusable,
    run_suite,
    train_args,
)
from selfsup.cli import main
from selfsup.config import load_config
from selfsup.core.errors import ConfigError

# data.num_samples: 256 of the digits per split (of 1438 / 359): the suite's commands (4 trainings, 18 fine-tunings, the
# kNN of 3 encoders per SimCLR run) extract features of every image, and what is checked is the runner, not accuracy
TINY_TRAIN = ["backbone.name=resnet10t", "trainer.max_steps=2", "trainer.batch_size=64", "trainer.log_every=1",
              "run.plots=false", "run.tensorboard=false", "data.num_samples=256"]


def write_suite(tmp_path: Path, finetune_steps: int = 2, hflip: bool = False) -> Path:
    """hflip=True leaves eval.finetune.hflip_p out of the protocol file (its default: 0.5)."""
    finetune = {"epochs": 1, "max_steps": finetune_steps, "batch_size": 64}
    if not hflip:
        finetune["hflip_p"] = 0.0
    (tmp_path / "proto.yaml").write_text(yaml.safe_dump({
        "name": "tiny-digits", "description": "digits, native 8 px, tiny settings",
        "data": {"name": "digits"}, "eval": {"knn_k": [5], "finetune": finetune},
        "protocols": ["knn", "finetune"]}))
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({
        "protocol": "proto.yaml", "seeds": [0, 1], "runs_root": str(tmp_path / "runs"),
        "out": str(tmp_path / "results" / "table.md"), "overrides": TINY_TRAIN,
        "rows": [{"name": "simclr", "recipe": "simclr-digits", "random_baseline": True},
                 {"name": "supervised", "recipe": "supervised-digits"}]}))
    return tmp_path / "suite.yaml"


# The two random-init rows of a `random_baseline: true` row (timm's init; PyTorch's reset_parameters()).
TIMM_ROW, DEFAULT_ROW = "random init, timm's (simclr arch.)", "random init, PyTorch default (simclr arch.)"


class Spy:
    """Runs selfsup in-process and records which subcommands the runner asked for."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, args: list[str]) -> int:
        self.calls.append(list(args))
        return main(list(args))


def test_runner_end_to_end_on_digits(tmp_path):
    suite_file = write_suite(tmp_path)
    spy = Spy()
    report = run_suite(load_suite(suite_file), cli=spy, log=lambda _: None)
    trains = [c for c in spy.calls if c[0] == "train"]
    evals = [c for c in spy.calls if c[0] == "eval"]
    assert len(trains) == 4  # 2 rows x 2 seeds
    assert len(evals) == 6  # fine-tune each of the 4 encoders + 2 from-scratch controls
    assert sum("eval.finetune.from_scratch=true" in c for c in evals) == 2
    rows = report["rows"]
    assert set(rows) == {"simclr", TIMM_ROW, DEFAULT_ROW, "supervised"}
    for name, per_seed in rows.items():
        assert set(per_seed) == {0, 1}
        if name == DEFAULT_ROW:  # frozen-feature protocols only: the from-scratch control is the timm row's
            assert all("knn_k5" in r and "finetune" not in r for r in per_seed.values())
            continue
        for result in per_seed.values():
            assert {"knn_k5", "finetune"} <= set(result) and "linear" not in result
            assert result["finetune"]["steps"] == 2  # the final step's model, never a best epoch
    assert all("classifier" in r for r in rows["supervised"].values())  # the supervised head's own top-1
    assert rows[TIMM_ROW][0]["finetune"]["settings"]["from_scratch"] is True

    md = (tmp_path / "results" / "table.md").read_text()
    values = [100 * rows["supervised"][s]["knn_k5"]["top1"] for s in (0, 1)]
    cell = f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"
    assert f"| supervised | {cell} |" in md
    assert f"| {TIMM_ROW} |" in md and f"| {DEFAULT_ROW} |" in md and "own head (supervised)" in md
    for args in trains + evals:  # every command that ran is written out in full
        assert " ".join(args[:3]) in md
    assert "trainer.seed=1" in md and f"run.dir={tmp_path / 'runs' / 'supervised-seed1'}" in md
    saved = json.loads((tmp_path / "results" / "table.json").read_text())
    assert saved["rows"]["simclr"]["0"]["knn_k5"] == rows["simclr"][0]["knn_k5"]

    # Second pass: the run directories and the fine-tuning results are reused, nothing runs.
    spy2 = Spy()
    again = run_suite(load_suite(suite_file), cli=spy2, log=lambda _: None)
    assert spy2.calls == [] and again["rows"] == report["rows"]
    assert "# reused" in (tmp_path / "results" / "table.md").read_text()

    # Other fine-tuning settings: only the fine-tuning runs again, the encoders are reused.
    write_suite(tmp_path, finetune_steps=1)
    spy3 = Spy()
    third = run_suite(load_suite(suite_file), cli=spy3, log=lambda _: None)
    assert [c[0] for c in spy3.calls] == ["eval"] * 6
    assert third["rows"]["simclr"][1]["finetune"]["steps"] == 1
    # A key dropped from the protocol file goes back to its default, although the run's config.yaml
    # (written at training time) still holds the old value: the eval commands spell out every key.
    write_suite(tmp_path, finetune_steps=1, hflip=True)
    fourth = run_suite(load_suite(suite_file), cli=Spy(), log=lambda _: None)
    assert fourth["rows"][TIMM_ROW][1]["finetune"]["settings"]["hflip_p"] == 0.5

    # Other training settings: the run directory no longer matches, so it would be retrained.
    suite = load_suite(suite_file, overrides=["trainer.max_steps=3"])
    assert not reusable(train_args(suite, suite.rows[0], 0))
    assert reusable(train_args(load_suite(suite_file), load_suite(suite_file).rows[0], 0))


def test_bad_suite_and_protocol_files_name_the_problem(tmp_path):
    suite_file = write_suite(tmp_path)
    bad = yaml.safe_load(suite_file.read_text())
    bad["rows"][0]["recip"] = "x"
    suite_file.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="unknown key 'recip'"):
        load_suite(suite_file)
    proto = yaml.safe_load((tmp_path / "proto.yaml").read_text())
    proto["eval"]["finetune"]["epoch"] = 3
    (tmp_path / "proto.yaml").write_text(yaml.safe_dump(proto))
    with pytest.raises(ConfigError, match="eval.finetune.epoch"):
        load_protocol(tmp_path / "proto.yaml")
    proto["eval"]["finetune"].pop("epoch")
    proto["protocols"] = ["knn", "svm"]
    (tmp_path / "proto.yaml").write_text(yaml.safe_dump(proto))
    with pytest.raises(ConfigError, match="unknown protocol 'svm'"):
        load_protocol(tmp_path / "proto.yaml")


# --------------------------------------------------------------------------- packaged suites and protocols


PACKAGED_SUITES = packaged_names(SUITES_DIR)
PACKAGED_PROTOCOLS = packaged_names(PROTOCOLS_DIR)


def test_packaged_files_exist_and_eval_links_point_at_them():
    assert {"digits", "cifar10-cpu", "cifar10-baselines-cpu"} <= set(PACKAGED_SUITES)
    assert {"digits", "cifar10-jpeg", "cifar10-jpeg-frozen"} <= set(PACKAGED_PROTOCOLS)
    eval_dir = Path(__file__).resolve().parents[2] / "eval"
    if eval_dir.is_dir():  # a checkout: eval/suites and eval/protocols are the packaged folders
        assert (eval_dir / "suites").resolve() == SUITES_DIR.resolve()
        assert (eval_dir / "protocols").resolve() == PROTOCOLS_DIR.resolve()


def test_packaged_suite_resolves_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not from the repository root: the name alone finds the file
    assert find_suite("digits") == SUITES_DIR / "digits.yaml"
    suite = load_suite("digits")
    assert suite.path == str(SUITES_DIR / "digits.yaml") and suite.name == "digits"
    assert Path(suite.protocol.path) == PROTOCOLS_DIR / "digits.yaml"  # `protocol: digits`, a packaged name
    assert "{date}" not in suite.out and suite.out.startswith("eval/results/benchmark-digits-20")
    assert load_suite(SUITES_DIR / "digits.yaml").name == ""  # given as a path: the table names the path


@pytest.mark.parametrize("name", PACKAGED_SUITES)
def test_each_packaged_suite_loads(name):
    suite = load_suite(name)
    assert suite.rows and suite.seeds
    for row in suite.rows:  # every row's training command resolves to a valid config
        args = train_args(suite, row, suite.seeds[0])
        assert load_config(args[1], args[2:]).trainer.seed == suite.seeds[0]


@pytest.mark.parametrize("name", PACKAGED_PROTOCOLS)
def test_each_packaged_protocol_loads(name):
    by_name, by_path = load_protocol(name), load_protocol(PROTOCOLS_DIR / f"{name}.yaml")
    assert by_name == by_path and by_name.protocols and by_name.description


def test_unknown_suite_name_is_one_line_with_the_closest(capsys):
    assert main(["benchmark", "digts"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("selfsup: error:")
    assert "suite 'digts'" in err and "did you mean 'digits'?" in err


def test_suite_protocol_by_packaged_name_or_path(tmp_path):
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({
        "protocol": "cifar10-jpeg-frozn", "rows": [{"name": "s", "recipe": "simclr-digits"}]}))
    with pytest.raises(ConfigError, match="did you mean 'cifar10-jpeg-frozen'"):
        load_suite(tmp_path / "suite.yaml")
    write_suite(tmp_path)  # `protocol: proto.yaml`: a file beside the suite wins over the packaged names
    assert load_suite(tmp_path / "suite.yaml").protocol.name == "tiny-digits"


def test_fine_tuning_reads_the_data_the_suite_trained_on(tmp_path):
    """A data.* key given to the suite (or a row) reaches the fine-tuning command after the protocol's own
    data keys, as it reached training: both read the same data."""
    suite = load_suite(write_suite(tmp_path), overrides=["data.num_samples=300"])
    calls: list[list[str]] = []
    run_suite(suite, cli=lambda args: calls.append(list(args)) or 0, log=lambda _: None)
    evals = [c for c in calls if c[0] == "eval"]
    assert evals and all(c[0] == "train" for c in calls if c not in evals)
    for command in calls:
        data_keys = [a for a in command if a.startswith("data.num_samples=")]
        assert data_keys and data_keys[-1] == "data.num_samples=300", command
