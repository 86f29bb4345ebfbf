"""``selfsup benchmark SUITE``: recipes x seeds -> trained encoders -> protocols -> a markdown table.

Protocol and suite files ship with the package (``selfsup/benchmarks/protocols/`` and
``selfsup/benchmarks/suites/``; in a checkout also ``eval/protocols`` and ``eval/suites``), so
``selfsup benchmark digits`` works after ``pip install``. A suite or protocol is given as a path or
as a packaged name (the file name without ``.yaml``).

A **protocol file** (``selfsup/benchmarks/protocols/*.yaml``) fixes what an encoder is measured on::

    name: digits
    description: what the splits and the transform are, in words (printed above the table)
    data: {name: digits}                       # data.* keys: dataset, splits (train / val), image_size
    eval: {knn_k: [20, 200], finetune: {epochs: 10, hflip_p: 0.0}}   # eval.* keys: protocol settings
    protocols: [knn, linear, finetune]

A **suite file** (``selfsup/benchmarks/suites/*.yaml``) says what to train and where to write the table::

    protocol: digits                           # a packaged protocol name, or a path (relative to the
                                               # working directory or to the suite file, or absolute)
    seeds: [0, 1]
    runs_root: runs/bench-digits               # one run directory per row and seed: ROOT/NAME-seedS
    out: eval/results/benchmark-digits-{date}.md   # {date}: today, YYYY-MM-DD (results are dated history)
    overrides: [trainer.epochs=20]             # for every row's training command
    rows:
      - {name: simclr, recipe: simclr-digits, random_baseline: true}   # + two "random init" rows
      - {name: supervised, recipe: supervised-digits, overrides: []}

For each row and seed the runner runs (or reuses) ``selfsup train RECIPE <protocol data/eval keys>
<suite overrides> <row overrides> trainer.seed=S run.dir=ROOT/NAME-seedS``. A run directory is
reused when its ``config.yaml`` equals what the command would resolve to (everything but
``eval.finetune``, which plays no part in training) and it holds ``encoder/`` and ``eval.json``.
kNN and the linear probe come from the run's own end-of-training evaluation (``eval.json``) of the
final encoder; the fine-tuning protocol runs ``selfsup eval RUN --protocol finetune ...`` (reused
when ``eval.json`` already holds a result with the same settings). ``random_baseline: true``
adds two rows, randomly initialised encoders of the same architecture: timm's own init
(``eval_random_init.json``; for fine-tuning, trained from scratch: ``finetune_scratch``) and PyTorch's
``reset_parameters()`` on every module (``eval_random_init_torch_default.json``; BN weight 1, the
stronger one for ResNets). A supervised row also reports its own head (``classifier``). Every number
is the final checkpoint's, never a best epoch.

The table shows mean +- sample standard deviation (n - 1) over seeds, in percent; the per-seed
values and every command follow it, and a JSON file beside the markdown holds all results.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import platform
import shlex
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import yaml

from selfsup.config import config_to_dict, load_config, resolve_config
from selfsup.core.errors import ConfigError
from selfsup.core.files import atomic_write
from selfsup.evaluation.finetune import validate_finetune
from selfsup.runs.evaluate import evaluate_run
from selfsup.runs.summary import RANDOM_BASELINES
from selfsup.runs.train import train

PROTOCOLS_DIR = Path(__file__).resolve().parent / "protocols"  # packaged protocol files
SUITES_DIR = Path(__file__).resolve().parent / "suites"  # packaged suite files
PROTOCOL_KEYS = {"name", "description", "data", "eval", "protocols"}
SUITE_KEYS = {"protocol", "seeds", "runs_root", "out", "overrides", "rows", "title", "notes"}
ROW_KEYS = {"name", "recipe", "overrides", "random_baseline"}
KNOWN_PROTOCOLS = ("knn", "linear", "finetune")
# Table columns: (result key in eval.json, header). The random-init row's fine-tuning is the
# from-scratch control, so it sits in the fine-tuning column.
COLUMNS = (("knn_k20", "kNN k=20"), ("knn_k200", "kNN k=200"), ("linear", "linear probe"),
           ("finetune", "fine-tune"), ("classifier", "own head (supervised)"))


@dataclass
class Protocol:
    name: str
    description: str
    data: dict
    eval: dict
    protocols: list[str]
    path: str = ""

    def overrides(self) -> list[str]:
        """The protocol as ``key=value`` overrides (data.* and eval.*), in a stable order."""
        flat = _flatten({"data": self.data, "eval": self.eval})
        return [f"{k}={_yaml_value(v)}" for k, v in flat.items()]


@dataclass
class Row:
    name: str
    recipe: str
    overrides: list[str] = field(default_factory=list)
    random_baseline: bool = False


@dataclass
class Suite:
    protocol: Protocol
    seeds: list[int]
    runs_root: str
    out: str
    rows: list[Row]
    overrides: list[str] = field(default_factory=list)
    title: str = ""
    notes: str = ""  # free text printed under the title (machine, caveats)
    path: str = ""
    name: str = ""  # the packaged suite's name when it was given by name (the table's reproduce command)


def _yaml_value(value: Any) -> str:
    """A value as it would be typed after ``key=`` (parsed back as YAML by the config loader)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_yaml_value(v) for v in value) + "]"
    return str(value)


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        elif not isinstance(value, dict):
            out[prefix + key] = value
    return out


def _read_yaml(path: Path, what: str, keys: set[str]) -> dict:
    if not path.is_file():
        raise ConfigError(f"{what} file {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} file {path} must be a mapping")
    unknown = sorted(set(raw) - keys)
    if unknown:
        raise ConfigError(f"{what} file {path}: unknown key '{unknown[0]}' (keys: {', '.join(sorted(keys))})")
    return raw


def packaged_names(folder: Path) -> list[str]:
    """The names (file stems) of the packaged ``*.yaml`` files in ``folder``, sorted."""
    return sorted(p.stem for p in folder.glob("*.yaml"))


def _find(what: str, value: str | Path, folder: Path, base: Path | None = None) -> Path:
    """An existing file ``value`` (as given, or relative to ``base``), else the packaged ``folder/value.yaml``;
    anything else is a ConfigError naming the closest packaged name."""
    path = Path(value)
    candidates = [path] if path.is_absolute() or base is None else [path, base / path]
    for candidate in candidates:
        if candidate.is_file():
            return Path(os.path.normpath(candidate))
    name = str(value).removesuffix(".yaml")
    if "/" not in name and (folder / f"{name}.yaml").is_file():
        return folder / f"{name}.yaml"
    names = packaged_names(folder)
    close = difflib.get_close_matches(path.stem, names, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"packaged: {', '.join(names)}"
    raise ConfigError(f"{what} '{value}' is neither a file nor a packaged {what} name ({hint})")


def find_suite(suite: str | Path) -> Path:
    """Resolve a suite given as a path or as a packaged name (``digits`` -> ``SUITES_DIR/digits.yaml``)."""
    return _find("suite", suite, SUITES_DIR)


def find_protocol(protocol: str | Path, base: Path | None = None) -> Path:
    """Resolve a protocol given as a path (as given, or relative to ``base``, a suite file's folder)
    or as a packaged name (``cifar10-jpeg`` -> ``PROTOCOLS_DIR/cifar10-jpeg.yaml``)."""
    return _find("protocol", protocol, PROTOCOLS_DIR, base)


def load_protocol(path: str | Path) -> Protocol:
    """Read a protocol file, given as a path or a packaged protocol name."""
    path = find_protocol(path)
    raw = _read_yaml(path, "protocol", PROTOCOL_KEYS)
    protocols = list(raw.get("protocols") or ["knn", "linear"])
    bad = [p for p in protocols if p not in KNOWN_PROTOCOLS]
    if bad:
        raise ConfigError(f"protocol file {path}: unknown protocol '{bad[0]}' (known: {', '.join(KNOWN_PROTOCOLS)})")
    proto = Protocol(name=str(raw.get("name") or path.stem), description=str(raw.get("description") or "").strip(),
                     data=dict(raw.get("data") or {}), eval=dict(raw.get("eval") or {}), protocols=protocols,
                     path=str(path))
    proto.eval.setdefault("linear", "linear" in protocols)  # the end-of-training evaluation runs the probe or not
    # unknown data.* / eval.* keys and out-of-range fine-tuning settings fail here, naming the key
    validate_finetune(resolve_config({}, proto.overrides()).eval.finetune)
    return proto


def load_suite(path: str | Path, *, seeds: list[int] | None = None, runs_root: str | None = None,
               out: str | None = None, overrides: list[str] | None = None) -> Suite:
    """Read a suite file, given as a path or a packaged suite name; the keyword arguments replace
    its fields (the CLI's flags). ``{date}`` in ``out`` becomes today's date (YYYY-MM-DD)."""
    given = str(path)
    path = find_suite(path)
    raw = _read_yaml(path, "suite", SUITE_KEYS)
    if "protocol" not in raw:
        raise ConfigError(f"suite file {path} names no protocol (protocol: NAME or a path to a protocol file)")
    try:
        proto_path = find_protocol(str(raw["protocol"]), base=path.parent)
    except ConfigError as err:
        raise ConfigError(f"suite file {path}: {err}") from None
    rows = []
    for i, item in enumerate(raw.get("rows") or []):
        if not isinstance(item, dict) or not {"name", "recipe"} <= set(item):
            raise ConfigError(f"suite file {path}: rows[{i}] needs a name and a recipe")
        unknown = sorted(set(item) - ROW_KEYS)
        if unknown:
            raise ConfigError(f"suite file {path}: rows[{i}] has an unknown key '{unknown[0]}' "
                              f"(keys: {', '.join(sorted(ROW_KEYS))})")
        rows.append(Row(name=str(item["name"]), recipe=str(item["recipe"]), overrides=list(item.get("overrides") or []),
                        random_baseline=bool(item.get("random_baseline", False))))
    if not rows:
        raise ConfigError(f"suite file {path} has no rows")
    names = [r.name for r in rows]
    if len(set(names)) != len(names):
        raise ConfigError(f"suite file {path}: row names must differ (they name the run directories)")
    suite = Suite(protocol=load_protocol(proto_path), seeds=[int(s) for s in (seeds or raw.get("seeds") or [0])],
                  runs_root=str(runs_root or raw.get("runs_root") or Path("runs") / f"bench-{path.stem}"),
                  out=str(out or raw.get("out") or f"eval/results/benchmark-{path.stem}-{{date}}.md").replace(
                      "{date}", datetime.now().strftime("%Y-%m-%d")),
                  rows=rows, overrides=[*(raw.get("overrides") or []), *(overrides or [])],
                  title=str(raw.get("title") or f"Benchmark: {path.stem}"), notes=str(raw.get("notes") or "").strip(),
                  path=str(path), name="" if Path(given).is_file() else path.stem)
    return suite


# --------------------------------------------------------------------------- running


def train_args(suite: Suite, row: Row, seed: int) -> list[str]:
    """The ``selfsup train`` arguments of one row and seed (without the program name)."""
    args = ["train", row.recipe, *suite.protocol.overrides(), *suite.overrides, *row.overrides]
    if row.random_baseline:
        args.append("eval.random_baseline=true")
    return [*args, f"trainer.seed={seed}", f"run.dir={run_dir(suite, row, seed)}"]


def run_dir(suite: Suite, row: Row, seed: int) -> str:
    return str(Path(suite.runs_root) / f"{row.name}-seed{seed}")


def _training_part(cfg_dict: dict) -> dict:
    """What decides the trained encoder and its end-of-training evaluation: all but eval.finetune."""
    out = json.loads(json.dumps(cfg_dict))
    out.get("eval", {}).pop("finetune", None)
    return out


def reusable(args: list[str]) -> bool:
    """Whether the run directory of ``selfsup train`` ``args`` already holds this training's results."""
    cfg = load_config(args[1], args[2:])
    run = Path(cfg.run.dir)
    if not ((run / "config.yaml").is_file() and (run / "eval.json").is_file() and (run / "encoder").is_dir()):
        return False
    if cfg.eval.random_baseline and not all((run / file).is_file() for file, _ in RANDOM_BASELINES.values()):
        return False
    try:
        saved = config_to_dict(resolve_config(yaml.safe_load((run / "config.yaml").read_text())))
    except ConfigError:
        return False
    return _training_part(saved) == _training_part(config_to_dict(cfg))


def run_command(args: list[str]) -> int:
    """Run one recorded ``selfsup`` command (``train RECIPE ...`` or ``eval --protocol P RUN ...``)
    through the library, in this process; errors propagate as they would from the CLI."""
    if args[0] == "train":
        train(load_config(args[1], args[2:]))
    elif args[:2] == ["eval", "--protocol"]:
        evaluate_run(args[3], args[2], args[4:])
    else:
        raise ValueError(f"not a benchmark command: {args}")
    return 0


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _finetune_done(results: dict, key: str, settings: dict) -> bool:
    have = results.get(key)
    return isinstance(have, dict) and have.get("settings") == settings


def run_suite(suite: Suite, *, cli: Callable[[list[str]], int] = run_command, log: Callable[[str], None] = print) -> dict:
    """Train or reuse every row x seed, run the protocols, write the markdown table and a JSON beside it.

    Returns ``{"rows": {row: {seed: {protocol: result}}}, "commands": [...], "out": path}``.
    ``cli`` runs ``selfsup`` arguments (in this process by default).
    """
    started = time.time()
    table: dict[str, dict[int, dict]] = {}
    commands: list[dict] = []
    finetune = "finetune" in suite.protocol.protocols
    ft_cfg = load_config(suite.rows[0].recipe, [*suite.protocol.overrides(), *suite.overrides]).eval.finetune
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(ft_cfg).items()}
    for row in suite.rows:  # the table's row order, whatever finishes first
        table[row.name] = {}
        if row.random_baseline:
            table.update({_random_name(row, key): {} for key in RANDOM_BASELINES})
    report: dict = {}
    for seed in suite.seeds:  # seed-major: an interrupted benchmark still has one seed of every row
        for row in suite.rows:
            args = train_args(suite, row, seed)
            run = Path(run_dir(suite, row, seed))
            reused = reusable(args)
            if not reused:
                log(f"[benchmark] training {row.name} seed {seed}: selfsup {shlex.join(args)}")
                t0 = time.time()
                if cli(args) != 0:
                    raise RuntimeError(f"training failed: selfsup {shlex.join(args)}")
                commands.append({"row": row.name, "seed": seed, "command": args, "seconds": round(time.time() - t0, 1)})
            else:
                log(f"[benchmark] reusing {run} ({row.name} seed {seed})")
                commands.append({"row": row.name, "seed": seed, "command": args, "reused": True})
            # Every fine-tuning key spelled out: `selfsup eval RUN` starts from the run's config.yaml, whose
            # eval.finetune keys are those of the protocol file at training time, not necessarily now.
            protocol_keys = [o for o in suite.protocol.overrides() if not o.startswith("eval.finetune.")]
            # data.* keys given to this suite or row (e.g. `selfsup benchmark SUITE data.train=...`) win over the
            # protocol's, as they did in the training command, so fine-tuning reads the data training read
            protocol_keys += [o for o in (*suite.overrides, *row.overrides) if o.startswith("data.")]

            def eval_overrides(scratch: bool) -> list[str]:
                ft = {**settings, "seed": seed, "from_scratch": scratch}
                return [*protocol_keys, *(f"eval.finetune.{k}={_yaml_value(v)}" for k, v in ft.items())]

            def finetune_once(key: str, wanted: dict, scratch: bool, label: str, what: str, failure: str) -> None:
                """Run one fine-tuning of this run unless eval.json already holds it with ``wanted`` settings."""
                ev = ["eval", "--protocol", "finetune", str(run), *eval_overrides(scratch)]
                if _finetune_done(_read_json(run / "eval.json"), key, wanted):
                    commands.append({"row": label, "seed": seed, "reused": True, "command": ev})
                    return
                log(f"[benchmark] {what} seed {seed}: selfsup {shlex.join(ev)}")
                if cli(ev) != 0:
                    raise RuntimeError(f"{failure}: selfsup {shlex.join(ev)}")
                commands.append({"row": label, "seed": seed, "command": ev})

            ft_settings = {**settings, "seed": seed}
            if finetune:
                finetune_once("finetune", ft_settings, False, row.name, f"fine-tuning {row.name}", "fine-tuning failed")
            results = _read_json(run / "eval.json")
            table[row.name][seed] = _pick(results, suite.protocol.protocols)
            summary = _read_json(run / "summary.json")
            if "train_time_s" in summary:  # how long the training took (not a protocol: kept out of the columns)
                table[row.name][seed]["_train_time_s"] = summary["train_time_s"]
            if row.random_baseline:
                default = _read_json(run / RANDOM_BASELINES["torch_default_init"][0])
                table[_random_name(row, "torch_default_init")][seed] = _pick(default, suite.protocol.protocols)
                random = _read_json(run / RANDOM_BASELINES["timm_init"][0])
                if finetune:  # the from-scratch control starts from the backbone as built: timm's init
                    finetune_once("finetune_scratch", {**ft_settings, "from_scratch": True}, True,
                                  _random_name(row, "timm_init"), f"from scratch ({row.name} architecture)",
                                  "fine-tuning from scratch failed")
                    results = _read_json(run / "eval.json")
                if finetune and "finetune_scratch" in results:
                    random["finetune"] = results["finetune_scratch"]
                table[_random_name(row, "timm_init")][seed] = _pick(random, suite.protocol.protocols)
            report = _write(suite, table, commands, started, log)
    return report


def _random_name(row: Row, init: str) -> str:
    """The table row of one of ``row``'s random-init baselines (``init``: a key of RANDOM_BASELINES)."""
    return {"timm_init": f"random init, timm's ({row.name} arch.)",
            "torch_default_init": f"random init, PyTorch default ({row.name} arch.)"}[init]


def _write(suite: Suite, table: dict, commands: list[dict], started: float, log: Callable[[str], None]) -> dict:
    """Write the markdown table and the JSON beside it (after every row and seed, so a cut-off run leaves them)."""
    report = {"rows": table, "commands": commands, "suite": suite.path, "protocol": suite.protocol.path,
              "seeds": suite.seeds, "seconds": round(time.time() - started, 1)}
    out = Path(suite.out)
    atomic_write(out, lambda tmp: tmp.write_text(format_markdown(suite, table, commands)))
    atomic_write(out.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n"))
    log(f"[benchmark] wrote {out} and {out.with_suffix('.json')}")
    return {**report, "out": str(out)}


def _pick(results: dict, protocols: list[str]) -> dict:
    """The table's entries of one eval.json: the columns whose protocol the suite runs."""
    wanted = {"knn": ("knn_k20", "knn_k200"), "linear": ("linear",), "finetune": ("finetune",)}
    keys = {k for p in protocols for k in wanted[p]} | {"classifier"}
    return {k: v for k, v in results.items() if k in keys or (k.startswith("knn_k") and "knn" in protocols)}


# --------------------------------------------------------------------------- the table


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def _cell(per_seed: dict[int, dict], key: str, metric: str = "top1", seeds: int = 0) -> str:
    """``mean ± std`` in percent; ``(n=k)`` when only k of the suite's seeds have a value so far."""
    values = [r[key][metric] for r in per_seed.values() if key in r and metric in r[key]]
    if not values:
        return "-"
    partial = f" (n={len(values)})" if len(values) < seeds else ""
    if len(values) == 1:  # one value has no spread to report
        return f"{100 * values[0]:.2f}{partial}"
    mean, std = mean_std([100 * v for v in values])
    return f"{mean:.2f} ± {std:.2f}{partial}"


def _columns(table: dict[str, dict[int, dict]]) -> list[tuple[str, str]]:
    present = {k for per_seed in table.values() for r in per_seed.values() for k in r if not k.startswith("_")}
    cols = [c for c in COLUMNS if c[0] in present]
    extra = sorted(k for k in present if k.startswith("knn_k") and k not in dict(COLUMNS))
    return [*[(k, f"kNN k={k[5:]}") for k in extra], *cols]


def format_markdown(suite: Suite, table: dict[str, dict[int, dict]], commands: list[dict]) -> str:
    cols = _columns(table)
    lines = [f"# {suite.title}", "",
             f"Generated by `selfsup benchmark {suite.name or suite.path}` on {datetime.now().strftime('%Y-%m-%d %H:%M')}, "
             f"host `{platform.node() or '?'}` ({_cpu_model()}, {_cpu_count()} CPU cores visible, "
             f"{_device()}).", "",
             *([suite.notes, ""] if suite.notes else []),
             f"Protocol `{suite.protocol.name}` ({_shown(suite.protocol.path)}): {', '.join(suite.protocol.protocols)}.", ""]
    if suite.protocol.description:
        lines += [suite.protocol.description, ""]
    spread = (f"mean ± sample std over seeds {suite.seeds} (n = {len(suite.seeds)})" if len(suite.seeds) > 1
              else f"one seed ({suite.seeds[0]})")
    lines += [f"Top-1 accuracy on the test split (%), {spread}; every number is the final checkpoint's / final epoch's, never a best epoch.", ""]
    lines.append("| encoder | " + " | ".join(h for _, h in cols) + " |")
    lines.append("|---|" + "---:|" * len(cols))
    for name, per_seed in table.items():
        lines.append(f"| {name} | " + " | ".join(_cell(per_seed, k, seeds=len(suite.seeds)) for k, _ in cols) + " |")
    top5 = [(k, h) for k, h in cols if any("top5" in r.get(k, {}) for ps in table.values() for r in ps.values())]
    if top5:
        lines += ["", "Top-5 (%):", "", "| encoder | " + " | ".join(h for _, h in top5) + " |",
                  "|---|" + "---:|" * len(top5)]
        for name, per_seed in table.items():
            lines.append(f"| {name} | " + " | ".join(_cell(per_seed, k, "top5", len(suite.seeds)) for k, _ in top5) + " |")
    lines += ["", "Per seed (top-1, %):", "", "| encoder | seed | " + " | ".join(h for _, h in cols) + " |",
              "|---|---:|" + "---:|" * len(cols)]
    for name, per_seed in table.items():
        for seed, r in per_seed.items():
            cells = [f"{100 * r[k]['top1']:.2f}" if k in r else "-" for k, _ in cols]
            lines.append(f"| {name} | {seed} | " + " | ".join(cells) + " |")
    times = {name: [r["_train_time_s"] for r in ps.values() if "_train_time_s" in r] for name, ps in table.items()}
    if any(times.values()):
        lines += ["", "Training time per run (the trainer's wall clock, this machine): " + "; ".join(
            f"{name} {statistics.fmean(t) / 60:.1f} min" for name, t in times.items() if t) + "."]
    lines += ["", "Notes: the random-init rows evaluate randomly initialised encoders of the same architecture "
              "(kNN / linear probe on their frozen features), initialised by timm (which zeroes the last BN of "
              "each ResNet block) and by PyTorch's reset_parameters() on every module (BN weight 1); the timm "
              "row's fine-tune cell is the train-from-scratch control (same schedule, random initialisation). "
              "The own-head column is a supervised model's classifier.", "",
              "Commands (from the repository root). `# reused`: the run directory already held this training (its "
              "config.yaml equals what the command resolves to) or eval.json already held this fine-tuning result "
              "(same settings), so it did not run again.", "",
              "```"]
    for c in commands:
        suffix = "   # reused (already done)" if c.get("reused") else (f"   # {c['seconds']:.0f} s" if "seconds" in c else "")
        lines.append("selfsup " + shlex.join(c["command"]) + suffix)
    lines += ["```", "", "Reproduce the whole table:", "", "```", f"selfsup benchmark {suite.name or suite.path}", "```", ""]
    return "\n".join(lines)


def _shown(path: str) -> str:
    """A packaged file as ``selfsup/benchmarks/...`` (the same in a checkout and an install); others as given."""
    package_root = PROTOCOLS_DIR.parents[2]
    resolved = Path(path).resolve()
    return str(resolved.relative_to(package_root)) if resolved.is_relative_to(package_root / "selfsup") else path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


def _device() -> str:
    import torch

    return f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"

