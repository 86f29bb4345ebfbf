"""The README: short, its method table is the registry, and every command it shows runs.

Every line of the README's ``bash`` blocks is a command; each runs here on tiny data (a synthetic
dataset, or a generated ImageFolder of JPEGs where the README points at CIFAR-10), with overrides
appended that shrink it to a couple of steps. ``python`` blocks run too, in order, in one namespace.
A command this test does not know how to run fails it, so the README cannot grow an untested command.

How a README command maps to what runs here: in a work folder holding what the README's first
commands leave behind, made once for the module (2 steps each): ``runs/simclr-digits`` and
``exported/simclr-digits`` (real digits), ``runs/simclr-cifar10`` and ``exported/simclr-cifar10``
(the tiny ImageFolder, timm's own stem as in the Results' command 1):

- ``selfsup train|bench ...``: in this process through ``selfsup.cli.main``, with ``TINY`` appended
  (and ``SYNTHETIC`` in place of a dataset that needs a download), a fresh ``run.dir``; bench: 1 step.
- ``selfsup eval|plot|list``: as written, in this process (``EVAL_TINY`` bounds fine-tuning).
- ``selfsup export RUN --out DIR``: ``DIR`` becomes a fresh folder.
- ``selfsup benchmark SUITE``: a copy of the suite whose protocol's data paths point at the tiny
  data, one seed, ``TINY`` for every training (and ``DIGITS``' subset where the protocol reads the digits),
  runs and table in a fresh folder.
- ``python -m selfsup ...``: as ``selfsup ...``, in a subprocess (the module entry point).
- ``./launch.sh``: the bare default job runs for real with ``TINY`` (``python -m selfsup train`` in
  a subprocess). Every other line runs with ``DRY_RUN=1`` (launch.sh prints the command it would
  run; checked: ``selfsup train`` with the line's arguments, the process count) under the line's
  variables (``srun``: SLURM's, as srun would set them); then, when that is one process, its
  ``selfsup train`` runs in this process with ``TINY``; with several, its config is loaded.
- ``NOT_RUN`` lines (installing, the test suite itself, a SLURM script's ``cd``) are skipped, named.
- Absolute data paths in ``DATA_PATHS`` become the tiny ImageFolder.
"""
from __future__ import annotations

import fnmatch
import os
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

import selfsup
import selfsup.config
import selfsup.data
from selfsup.cli import build_parser, main
from selfsup.config import load_config
from selfsup.core.registry import METHODS

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
MAX_LINES = 300

SYNTHETIC = ["data.name=synthetic", "data.num_samples=64", "data.image_size=16", "data.num_classes=4"]
DIGITS = ["data.num_samples=128"]  # of each split: the real digits, but a linear probe on 1438 images takes long
FINETUNE_TINY = ["eval.finetune.max_steps=1", "eval.finetune.batch_size=16", "eval.finetune.warmup_epochs=0"]
TINY = ["backbone.name=test_resnet", "trainer.batch_size=16", "trainer.epochs=1", "trainer.max_steps=2",
        "trainer.warmup_epochs=0", "trainer.log_every=1", "eval.random_baseline=false", "run.plots=false",
        "run.tensorboard=false", *FINETUNE_TINY]
EVAL_TINY = [*FINETUNE_TINY, "run.plots=false"]
DATA_PATHS = ("/data/cifar10-jpeg", "/tmp/cifar10-jpeg")  # -> the tiny ImageFolder (train/, test/)
NOT_RUN = {
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test,plots,onnx,tensorboard]'":
        "installing takes minutes and the package index; .ci/run runs exactly this on a fresh machine",
    "pytest -q": "the test suite this test belongs to",
    "cd /path/to/selfsup && . .venv/bin/activate": "the SLURM script's setup line",
}


# ----------------------------------------------------------------------------- reading the README


def code_blocks(lang: str) -> list[str]:
    return [m.group(2) for m in re.finditer(r"^```(\w*)\n(.*?)^```", README.read_text(), re.S | re.M)
            if m.group(1) == lang]


def shell_lines() -> list[str]:
    """Every command line of the ``bash`` blocks: continuations joined, comment lines dropped."""
    lines = []
    for block in code_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                lines.append(" ".join(line.split()))
    return lines


def method_rows() -> dict[str, list[str]]:
    """The README's method table: {method name: its cells}."""
    section = README.read_text().split("\n## Methods\n")[1].split("\n## ")[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) > 1 and re.fullmatch(r"`[\w-]+`", cells[0]):
            rows[cells[0].strip("`")] = cells
    return rows


# ----------------------------------------------------------------------------- (a), (b): length, method table


def test_readme_is_at_most_300_lines():
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_LINES, f"README.md has {lines} lines (at most {MAX_LINES}: move reference text to docs/)"


def test_method_table_is_the_registry_with_each_paper():
    rows = method_rows()
    assert sorted(rows) == METHODS.names(), "the README's method table must list exactly the registered methods"
    recipes = {p.stem for p in (REPO / "recipes").glob("*.yaml")}
    for name, cells in rows.items():
        paper = METHODS.get(name).paper
        assert paper and paper in cells[1], f"README row `{name}`: paper cell should hold {paper!r}"
        for recipe in re.findall(r"`([\w*-]+)`", cells[2]):  # a name, or a pattern such as `lstm-*`
            assert fnmatch.filter(recipes, recipe), f"README row `{name}`: no recipe matches `{recipe}`"


# ----------------------------------------------------------------------------- (c): every command runs


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A work folder (the commands' cwd): the tiny ImageFolder ``data/{train,test}/<class>/*.jpg``,
    ``recipes`` linked, and the runs and exports the README's commands refer to (module docstring)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("readme")
    g = torch.Generator().manual_seed(0)
    for split, per_class in (("train", 12), ("test", 4)):
        for c in range(4):
            folder = root / "data" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = (torch.rand(32, 32, 3, generator=g) * 60 + 60 * c).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=75)
    (root / "recipes").symlink_to(REPO / "recipes")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; a shared CPU
    cifar = ["data.name=imagefolder", f"data.train={root / 'data' / 'train'}", f"data.val={root / 'data' / 'test'}",
             "backbone.small_stem=false"]  # as the README's Results command 1
    for recipe, overrides in (("simclr-digits", []), ("simclr-cifar10", cifar)):
        run, export = root / "runs" / recipe, root / "exported" / recipe
        assert in_process(["train", recipe, *overrides, *tiny(recipe, overrides, root), f"run.dir={run}"]) == 0
        assert in_process(["export", str(run), "--out", str(export)]) == 0
    yield root
    torch.set_num_threads(threads)


def cache(root: Path) -> list[str]:
    return [f"data.cache_dir={root / 'cache'}"]


def fresh(root: Path, stem: str) -> Path:
    n = 0
    while (root / f"{stem}{n}").exists():
        n += 1
    return root / f"{stem}{n}"


def data_paths(args: list[str], root: Path) -> list[str]:
    for path in DATA_PATHS:
        args = [a.replace(path, str(root / "data")) for a in args]
    return args


def tiny(recipe: str | None, overrides: list[str], root: Path) -> list[str]:
    """What a training command gets appended: the tiny model and schedule, ``SYNTHETIC`` data in place
    of a dataset that would need a download, a subset of the digits (given paths are kept)."""
    if recipe and "=" in recipe:
        recipe, overrides = None, [recipe, *overrides]
    data = {"cifar10": SYNTHETIC, "cifar100": SYNTHETIC, "stl10": SYNTHETIC, "digits": DIGITS}
    return [*data.get(load_config(recipe, overrides).data.name, []), *TINY, *cache(root)]


def selfsup_args(tokens: list[str], root: Path) -> list[str]:
    """The ``selfsup`` arguments that stand for a README command's (see the module docstring)."""
    try:
        ns = build_parser().parse_args(tokens)
    except SystemExit:
        pytest.fail(f"does not parse: selfsup {shlex.join(tokens)}")
    given = {k: v for k, v in vars(ns).items() if k not in ("command", "debug")}
    debug = ["--debug"] if ns.debug else []
    overrides = data_paths(list(getattr(ns, "overrides", [])), root)
    recipe = [ns.recipe] if getattr(ns, "recipe", None) else []
    handled = {"train": {"recipe", "overrides"}, "eval": {"path", "protocol", "overrides"},
               "export": {"run", "out", "format"}, "bench": {"recipe", "overrides", "steps", "warmup", "rounds"},
               "benchmark": {"suite", "overrides", "seeds", "runs_root", "out"}, "plot": {"run"}, "list": set(),
               "data": {"data_command", "out", "seed", "num_train", "num_val", "size", "imagefolder", "shard_size"},
               "transfer": {"task", "encoder", "overrides"}}
    if ns.command not in handled or set(given) - handled[ns.command]:
        pytest.fail(f"teach tests/docs/test_readme.py to run `selfsup {ns.command}` with {sorted(given)}")
    if ns.command == "train":
        return [*debug, "train", *recipe, *overrides, *tiny(ns.recipe, overrides, root),
                f"run.dir={fresh(root, 'runs/train-')}"]
    if ns.command == "bench":
        return [*debug, "bench", *recipe, *overrides, *tiny(ns.recipe, overrides, root),
                "--steps", "1", "--warmup", "0", "--rounds", "1"]
    if ns.command == "eval":
        return [*debug, "eval", ns.path, "--protocol", ns.protocol, *overrides, *EVAL_TINY]
    if ns.command == "export":
        return [*debug, "export", ns.run, "--out", str(fresh(root, "exported/out-")), "--format", ns.format]
    if ns.command == "benchmark":
        suite = tiny_suite(ns.suite, root)
        proto = yaml.safe_load((suite.parent / "protocol.yaml").read_text())
        subset = DIGITS if proto.get("data", {}).get("name") == "digits" else []  # as `train` gets for the digits
        return [*debug, "benchmark", str(suite), *overrides, *subset, *TINY, *cache(root), "--seeds", "0",
                "--runs-root", str(suite.parent / "runs"), "--out", str(suite.parent / "table.md")]
    if ns.command == "data" and ns.data_command == "scenes":  # the README's folder, 12 + 3 scenes of 32 px (seed 0:
        # every digit occurs in train; detection refuses a category without annotations)
        return [*debug, "data", "scenes", "--out", ns.out, "--seed", str(ns.seed), "--num-train", "12", "--num-val", "3",
                "--size", "32"]
    if ns.command == "transfer":  # two steps, small batches, on the README's scenes
        return [*debug, "transfer", ns.task, ns.encoder, *overrides, "train.steps=2", "train.batch_size=2",
                f"run.dir={fresh(root, 'runs/transfer-')}"]
    if ns.command == "data":
        pytest.fail(f"teach tests/docs/test_readme.py to run `selfsup data {ns.data_command}`")
    return [*debug, ns.command, *[str(v) for v in given.values()]]


def tiny_suite(suite: str, root: Path) -> Path:
    """A copy of ``suite`` (path or packaged name, as given from the repository root) whose protocol
    reads the tiny data wherever the real one names a path in ``DATA_PATHS``."""
    from selfsup.benchmarks.suites import find_protocol, find_suite

    path = find_suite(suite if Path(suite).is_absolute() else _from_repo(suite))
    raw = yaml.safe_load(path.read_text())
    proto_path = find_protocol(str(raw["protocol"]), base=path.parent)
    proto = yaml.safe_load(proto_path.read_text())
    for key in ("train", "val", "root"):
        if isinstance(proto.get("data", {}).get(key), str):
            proto["data"][key] = data_paths([proto["data"][key]], root)[0]
    folder = fresh(root, "bench-")
    folder.mkdir()
    (folder / "protocol.yaml").write_text(yaml.safe_dump(proto))
    raw["protocol"] = str(folder / "protocol.yaml")
    (folder / "suite.yaml").write_text(yaml.safe_dump(raw))
    return folder / "suite.yaml"


def _from_repo(path: str) -> str:
    return str(REPO / path) if (REPO / path).exists() else path


def in_process(args: list[str]) -> int:
    """``selfsup ARGS`` through ``selfsup.cli.main``, each with a fresh Accelerate state (a process
    holds one, fixed by its first Accelerator: a bf16 command after an fp32 one needs a new one)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        return main(args)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def subprocess_env(root: Path) -> dict[str, str]:
    """This interpreter's ``python`` first on the PATH; one thread, as in this process (tiny models)."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "SELFSUP_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1"}


def launch(env: dict[str, str], args: list[str], root: Path, slurm_nodes: int | None) -> None:
    """``./launch.sh``: the bare default job runs for real (one process); every other line is a dry run
    (the command launch.sh would run, checked) plus, when that is one process, its ``selfsup train``
    in this process; with several processes the recipe and keys they would get are loaded."""
    env = {**subprocess_env(root), **env}
    if slurm_nodes:
        env.update(SLURM_NNODES=str(slurm_nodes), SLURM_NODEID="0", SLURM_NTASKS=str(slurm_nodes),
                   SLURM_JOB_NODELIST=f"node[0-{slurm_nodes - 1}]")
    processes = int(env.get("NPROC", "1")) * int(env.get("NNODES", "1")) * (slurm_nodes or 1)
    recipe, overrides = (args[0], args[1:]) if args and "=" not in args[0] else (None, args)
    real = processes == 1 and not args and env.get("DRY_RUN", "0") == "0"
    args = [*data_paths(args, root), *tiny(recipe, overrides, root), f"run.dir={fresh(root, 'runs/launch-')}"]
    if not real:
        env["DRY_RUN"] = "1"
    proc = subprocess.run(["bash", str(REPO / "launch.sh"), *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if real:
        assert (Path(args[-1].partition("=")[2]) / "encoder" / "model.safetensors").is_file(), proc.stdout[-3000:]
        return
    printed = shlex.split(proc.stdout.strip().splitlines()[-1])
    assert printed[-len(args) - 2:] == ["selfsup", "train", *args], proc.stdout
    if processes > 1:
        assert printed[printed.index("--num_processes") + 1] == str(processes), proc.stdout
        load_config(recipe, overrides)
    else:
        assert in_process(["train", *args]) == 0


def test_lines_not_run_here_are_in_the_readme_and_are_what_ci_runs():
    """The install and test lines are not run by this test but by CI: .ci/run runs exactly them."""
    lines, ci = shell_lines(), (REPO / ".ci" / "run").read_text()
    assert all(line in lines for line in NOT_RUN), "a NOT_RUN line is no longer in the README"
    install, test = (line for line in lines if line in NOT_RUN and not line.startswith("cd "))
    assert f"{install} && {test}" in ci, "the README's install and test commands differ from .ci/run's"


@pytest.mark.slow
@pytest.mark.parametrize("line", [line for line in shell_lines() if line not in NOT_RUN], ids=lambda line: line[:60])
def test_readme_command_runs(line, request, monkeypatch):
    work = request.getfixturevalue("work")
    tokens = shlex.split(line, comments=True)
    env = {}
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", tokens[0]):
        key, _, value = tokens.pop(0).partition("=")
        env[key] = value
    slurm_nodes = None
    if tokens and tokens[0] == "srun":
        options = [t for t in tokens[1:] if t.startswith("-")]
        nodes = [int(o.split("=")[1]) for o in options if o.startswith(("--nodes=", "-N="))]
        slurm_nodes = nodes[0] if nodes else 2
        tokens = tokens[1 + len(options):]
    monkeypatch.chdir(work)
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # main() sets its own
    if tokens[:1] == ["./launch.sh"]:
        launch(env, tokens[1:], work, slurm_nodes)
    elif env or slurm_nodes:
        pytest.fail(f"teach tests/docs/test_readme.py to run: {line}")
    elif tokens[:1] == ["selfsup"]:
        assert in_process(selfsup_args(tokens[1:], work)) == 0, line
    elif tokens[:3] == ["python", "-m", "selfsup"]:
        proc = subprocess.run([sys.executable, "-m", "selfsup", *selfsup_args(tokens[3:], work)], cwd=work,
                              env=subprocess_env(work), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    else:
        pytest.fail(f"the README shows a command this test does not know how to run: {line}")


@pytest.mark.slow
def test_readme_python_blocks_run(work, monkeypatch):
    """The ``python`` blocks, in order, in one namespace; ``load_config`` gets the tiny overrides
    appended, ``load_dataset`` takes a subset (``DIGITS``)."""
    real_load_dataset = selfsup.data.load_dataset

    def tiny_load_config(recipe=None, overrides=None):
        overrides = list(overrides or [])
        return load_config(recipe, [*overrides, *tiny(recipe, overrides, work), f"run.dir={fresh(work, 'runs/api-')}"])

    def tiny_load_dataset(name, split, **options):
        return real_load_dataset(name, split, **{**options, "num_samples": 128})

    monkeypatch.chdir(work)
    for module in (selfsup, selfsup.config):
        monkeypatch.setattr(module, "load_config", tiny_load_config)
    for module in (selfsup, selfsup.data):
        monkeypatch.setattr(module, "load_dataset", tiny_load_dataset)
    namespace: dict = {}
    blocks = code_blocks("python")
    assert blocks, "the README shows no Python"
    for block in blocks:
        exec(compile(block, "README.md (python block)", "exec"), namespace)


def test_readme_lists_the_whole_public_api():
    """Every name ``selfsup`` exports appears in the README (its Python API table), and no more."""
    text = README.read_text()
    table = text[text.index("What `selfsup` exports, by role"):]
    table = table[: table.index("\n\n", table.index("| role"))]
    listed = set(re.findall(r"`(\w+)`", table[table.index("| role"):]))
    exported = set(selfsup.__all__) - {"__version__"}
    assert listed == exported, f"missing from the README: {sorted(exported - listed)}; not exported: {sorted(listed - exported)}"
