"""One-shot GPU verification: every GPU check of issue 15 in one time-boxed run, one JSON file.

Parts, in order (each a subprocess under coreutils ``timeout``, its wall time recorded; a part that
fails, hangs or finds no time left is recorded with ``status`` and ``error`` and the rest go on):

==================  ====================================================================  ========
part                what                                                                   cap (s)
==================  ====================================================================  ========
env                 torch / CUDA / device name / lightly version / git commit                  30
cuda_tests          ``pytest -m cuda`` (counts from its JUnit XML)                             90
data                decode ``--cifar`` into selfsup's cache, or write a synthetic              60
                    ImageFolder for LightlySSL's DataLoader
bench_<m>_eager     ``selfsup bench <m>-cifar10`` bf16, batch 512, ResNet-18 small stem        45
bench_<m>_compile   the same with ``trainer.compile=true`` (compile time is in its wall)      120
                    for m = simclr, dino (2 x 32 px + 6 x 16 px crops), moco (v2)
lightly_simclr      ``eval/scripts/bench_lightly.py``: LightlySSL's SimCLR vs ours, same GPU    90
train_simclr        ``selfsup train simclr-cifar10`` for the steps that fit in the time       rest
                    left (from the eager SimCLR bench's step time), then kNN k=20/200
==================  ====================================================================  ========

A part's timeout is its cap, clipped so that ``--budget`` (default 450 s; the issue asks for under
8 minutes on one H100/H200) still leaves ``TRAIN_RESERVE`` seconds for the training run, which takes
whatever is left. The JSON is rewritten after every part, so a killed run still leaves its parts.

Data: ``--cifar DIR`` (``DIR/train``, ``DIR/test`` in ImageFolder layout, e.g. the CIFAR-10 JPEG
copy) for every part; without it the benches and the training run use ``data.name=synthetic`` at
32 px (the kNN is then only a smoke number) and LightlySSL reads a generated synthetic ImageFolder.

GPU workflow (this workplace's ``device`` tool; the H200 image has torch, timm and accelerate but
not faiss-cpu or lightly, and a call carries at most 64 MiB, so a CIFAR-10 subset travels).
Here, once, from the repository root::

    echo /.gpu/ >> .git/info/exclude     # .whl/ is already in .gitignore
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl faiss-cpu lightly
    python3 eval/scripts/gpu_verify.py --pack-cifar ../shared/data/cifar10-jpeg.zip .gpu/cifar10.zip --per-class 2500

then one ``run`` call, ``carry: [".whl", ".gpu"]``, ``timeout_s: 560``, this command on one line::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
    PYTHONPATH=/tmp/site:$PWD DATA=.gpu/cifar10.zip eval/scripts/gpu_verify.sh $OUT/verify.json

(the subset: 25,000 training images, 2,500 per class, and the 10,000 test images, 35 MiB; with the
two wheels, 19 MiB, the call stays under 64 MiB).

``verify.json`` comes back under the call's ``files_at``; record it as
``eval/results/gpu-verify-h200-DATE.json`` with a dated note in ``eval/results/README.md``.

CPU dry run (what CI runs, ``tests/eval_scripts/test_gpu_verify.py``): ``--dry-run`` or
``DRY_RUN=1``: the same parts and code paths at tiny sizes on the CPU, bf16 autocast included:
batch 16 at 16 px (DINO: 2 local crops of 8 px), one step per bench phase, a training run of 4
steps; the benches and the training run keep timm's ``resnet18`` with the small stem but at one
block per stage and 1/8 width (``backbone.model_args``: ``layers=[1,1,1,1]``,
``channels=[8,16,32,64]``, ``stem_width=8``; 84 k parameters instead of 11 M), since a CPU without
bf16 kernels runs bf16 convolutions slowly and dynamo's tracing grows with the layer count;
``torch.compile`` goes through dynamo's ``eager`` backend, so no kernel is generated;
``lightly_simclr`` (LightlySSL's side is always torchvision's full ResNet-18) runs batch 4 at 8 px;
``cuda_tests`` collects ``tests/evaluation/test_knn.py`` only (its GPU test is skipped on a CPU).
Each part's entry also records ``cpu_s``, its processes' CPU time, steadier than ``wall_s`` on a
shared machine.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
import zipfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent
METHODS = ("simclr", "dino", "moco")
TRAIN_RESERVE = 90.0  # seconds kept for the training run when clipping the other parts' timeouts
CAPS = {"env": 30, "cuda_tests": 90, "data": 60, "eager": 45, "compile": 120, "lightly": 90}

# Sizes: the GPU run (one H100/H200) and the CPU dry run, same parts and code paths.
GPU = dict(batch=512, image_size=32, synthetic_samples=50_000, folder_per_class=(700, 100),
           bench=["--steps", "20", "--warmup", "5", "--rounds", "3"],
           lightly=["--rounds", "3", "--steps", "10", "--warmup", "3"], workers=None,
           method_overrides={}, backbone=[], lightly_batch=None, lightly_overrides=[], overhead_s=40.0,
           max_train_steps=None, budget=450.0, cuda_tests=["tests"], env={})
DRY = dict(batch=16, image_size=16, synthetic_samples=64, folder_per_class=(4, 2),
           bench=["--steps", "1", "--warmup", "1", "--rounds", "1"],
           lightly=["--rounds", "1", "--steps", "1", "--warmup", "1", "--no-lightly-model-only"], workers=0,
           method_overrides={"dino": ["method.local_crop_size=8", "method.num_local_crops=2"]},
           # the same timm ResNet-18 code path (small stem), one block per stage at 1/8 width: 84 k parameters
           # instead of 11 M, so bf16 on a CPU without bf16 kernels and dynamo's tracing stay cheap
           backbone=["backbone.model_args.layers=[1,1,1,1]", "backbone.model_args.channels=[8,16,32,64]",
                     "backbone.model_args.stem_width=8"],
           # LightlySSL's side keeps torchvision's full ResNet-18 (bf16 on this CPU: ~0.5 CPU s per image and
           # view), so batch 4, cropped to 8 px (without data.image_size its transform crops to 32 px)
           lightly_batch=4, lightly_overrides=["data.image_size=8"],
           overhead_s=15.0, max_train_steps=4, budget=1200.0, cap_scale=4.0,  # generous: a loaded CI machine
           cuda_tests=["tests/evaluation/test_knn.py"],  # its GPU test is collected (and skipped) on a CPU
           env={"TORCH_COMPILE_OVERRIDE_BACKENDS": ">=0:eager", "CUDA_VISIBLE_DEVICES": ""})


class Runner:
    """Runs the parts against one deadline and keeps the JSON on disk up to date."""

    def __init__(self, out: Path, work: Path, budget: float, dry_run: bool, env: dict[str, str]):
        self.out, self.work, self.dry_run = out, work, dry_run
        self.start = time.monotonic()
        self.deadline = self.start + budget
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), self.env.get("PYTHONPATH")) if p)
        self.report: dict = {"script": "eval/scripts/gpu_verify.py", "dry_run": dry_run, "budget_s": budget,
                             "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             "parts": {}}
        (work / "logs").mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        self.report["total_wall_s"] = round(time.monotonic() - self.start, 1)
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.report, indent=1) + "\n")
        tmp.replace(self.out)

    def record(self, name: str, entry: dict) -> dict:
        self.report["parts"][name] = entry
        self.save()
        print(f"gpu_verify: {name}: {entry['status']} in {entry.get('wall_s', 0)} s"
              + (f" ({entry['error'][-200:]})" if entry.get("error") else ""), flush=True)
        return entry

    def part(self, name: str, cmd: list[str], cap: float, parse=None, reserve: float = TRAIN_RESERVE) -> dict:
        """Run ``cmd`` under ``timeout``; ``parse(output) -> dict`` becomes the entry's ``result``."""
        limit = min(cap, self.left() - reserve)
        if limit < 5:
            return self.record(name, {"status": "skipped", "error": f"no time left ({self.left():.0f} s)",
                                      "wall_s": 0.0})
        full = ["timeout", "--kill-after=10", f"{limit:.0f}", *cmd]
        start, cpu = time.monotonic(), _children_cpu_s()
        try:
            proc = subprocess.run(full, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False,
                                  text=True, timeout=limit + 30)
            output, rc = proc.stdout, proc.returncode
        except subprocess.TimeoutExpired as e:  # timeout(1) itself stuck: should not happen
            output, rc = (e.stdout or "") if isinstance(e.stdout, str) else "", 124
        wall, cpu = round(time.monotonic() - start, 1), round(_children_cpu_s() - cpu, 1)
        (self.work / "logs" / f"{name}.log").write_text(output)
        entry: dict = {"status": "ok", "wall_s": wall, "cpu_s": cpu, "timeout_s": round(limit), "returncode": rc,
                       "command": " ".join(cmd)}
        if rc in (124, 137):
            entry.update(status="timeout", error=f"stopped after {limit:.0f} s: " + _tail(output))
        elif rc != 0:
            entry.update(status="error", error=_tail(output))
        if parse is not None:
            try:
                entry["result"] = parse(output)
            except Exception as e:  # noqa: BLE001 - any parse failure is this part's error
                entry.update(status="error" if entry["status"] == "ok" else entry["status"],
                             error=entry.get("error") or f"{type(e).__name__}: {e}: " + _tail(output))
        return self.record(name, entry)


def _children_cpu_s() -> float:
    """User + system CPU seconds of the finished child processes (a part's own, on a shared machine)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])[-1500:]


def last_json(output: str) -> dict:
    """The last line of ``output`` that is a JSON object (``selfsup bench``, ``bench_lightly.py``)."""
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON line in the output")


def junit_counts(path: Path) -> dict:
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["seconds"] = float(suite.get("time", 0))
    return counts


def write_synthetic_folder(root: Path, per_class: tuple[int, int], size: int, classes: int = 10) -> int:
    """An ImageFolder (``train/``, ``test/``) of random JPEGs, for LightlySSL's DataLoader."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    count = 0
    for split, n in zip(("train", "test"), per_class):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=75)
                count += 1
    return count


def pack_cifar(zip_in: str, zip_out: str, per_class: int) -> None:
    """Copy ``test/`` and the first ``per_class`` images of each ``train/`` class into ``zip_out``."""
    Path(zip_out).parent.mkdir(parents=True, exist_ok=True)
    taken: dict[str, int] = {}
    with zipfile.ZipFile(zip_in) as src, zipfile.ZipFile(zip_out, "w", zipfile.ZIP_STORED) as dst:
        for info in sorted(src.infolist(), key=lambda i: i.filename):
            parts = Path(info.filename).parts
            if info.is_dir() or "train" not in parts and "test" not in parts:
                continue
            if "train" in parts:
                key = str(Path(info.filename).parent)
                taken[key] = taken.get(key, 0) + 1
                if taken[key] > per_class:
                    continue
            dst.writestr(info, src.read(info))
    print(f"{zip_out}: {Path(zip_out).stat().st_size / 2**20:.1f} MiB")


def data_overrides(args, sizes: dict) -> list[str]:
    if args.cifar:
        return ["data.name=imagefolder", f"data.train={args.cifar}/train", f"data.val={args.cifar}/test"]
    return ["data.name=synthetic", f"data.image_size={sizes['image_size']}",
            f"data.num_samples={sizes['synthetic_samples']}", "data.num_classes=10"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", nargs="?", help="the JSON file (default: $OUT/verify.json, else ./verify.json)")
    p.add_argument("--dry-run", action="store_true", default=os.environ.get("DRY_RUN") == "1",
                   help="tiny sizes on the CPU, the same parts (also DRY_RUN=1)")
    p.add_argument("--cifar", help="ImageFolder root with train/ and test/ (the CIFAR-10 JPEG copy)")
    p.add_argument("--budget", type=float, help="seconds for the whole run (default 450; dry run 1200)")
    p.add_argument("--work", help="scratch folder (default: a temporary one, removed at the end)")
    p.add_argument("--pack-cifar", nargs=2, metavar=("ZIP_IN", "ZIP_OUT"),
                   help="only write a CIFAR-10 subset zip small enough to carry, then exit")
    p.add_argument("--per-class", type=int, default=2500, help="--pack-cifar: training images per class")
    p.add_argument("--env-info", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.env_info:
        print(json.dumps(env_info()))
        return 0
    if args.pack_cifar:
        pack_cifar(*args.pack_cifar, args.per_class)
        return 0
    sizes = DRY if args.dry_run else GPU
    out = Path(args.out or Path(os.environ.get("OUT", ".")) / "verify.json").resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-verify-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.cifar:
        args.cifar = str(Path(args.cifar).resolve())
    r = Runner(out, work, args.budget or sizes["budget"], args.dry_run, sizes["env"])
    r.report["data"] = "imagefolder " + args.cifar if args.cifar else "synthetic"
    try:
        run_parts(r, args, sizes)
    finally:
        r.save()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"gpu_verify: wrote {out} ({r.report['total_wall_s']} s)")
    return 0


def run_parts(r: Runner, args, sizes: dict) -> None:
    py = sys.executable
    env = r.part("env", [py, str(Path(__file__).resolve()), "--env-info"], CAPS["env"] * sizes.get("cap_scale", 1.0), last_json).get("result", {})
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    r.report["commit"] = git.stdout.strip() or None

    xml = r.work / "cuda-tests.xml"
    r.part("cuda_tests", [py, "-m", "pytest", "-m", "cuda", "-q", "-n", "0", "-p", "no:cacheprovider",
                          "--continue-on-collection-errors", f"--junitxml={xml}",
                          *sizes["cuda_tests"]], CAPS["cuda_tests"] * sizes.get("cap_scale", 1.0), lambda _: junit_counts(xml))

    folder = Path(args.cifar) if args.cifar else r.work / "folder"
    data_flags = data_overrides(args, sizes)
    if args.cifar:  # decode once into selfsup's cache, so later parts time steps, not JPEG decoding
        code = ("import json, sys; from selfsup import load_config, open_split;"
                "cfg = load_config('simclr-cifar10', sys.argv[1:]);"
                "n = {s: len(open_split(cfg.data, s, seed=0)) for s in ('train', 'val')};"
                "print(json.dumps({'images': n['train'] + n['val'], **n}))")
        r.part("data", [py, "-c", code, *data_flags], CAPS["data"] * sizes.get("cap_scale", 1.0), last_json)
    else:
        start = time.monotonic()
        try:
            n = write_synthetic_folder(folder, sizes["folder_per_class"], sizes["image_size"])
            r.record("data", {"status": "ok", "wall_s": round(time.monotonic() - start, 1),
                              "result": {"images": n, "synthetic_folder": True}})
        except Exception as e:  # noqa: BLE001
            r.record("data", {"status": "error", "wall_s": round(time.monotonic() - start, 1), "error": repr(e)})

    common = [*data_flags, f"trainer.batch_size={sizes['batch']}", "trainer.precision=bf16",
              "backbone.name=resnet18", "backbone.small_stem=true", *sizes["backbone"]]
    for method in METHODS:
        for mode in ("eager", "compile"):
            cmd = [py, "-m", "selfsup", "bench", f"{method}-cifar10", *common,
                   *sizes["method_overrides"].get(method, []), f"trainer.compile={str(mode == 'compile').lower()}",
                   *sizes["bench"]]
            r.part(f"bench_{method}_{mode}", cmd, CAPS[mode] * sizes.get("cap_scale", 1.0), last_json)

    if env.get("lightly") or _has_lightly():
        workers = sizes["workers"] if sizes["workers"] is not None else max(1, min(14, (os.cpu_count() or 2) - 2))
        r.part("lightly_simclr", [py, str(SCRIPTS / "bench_lightly.py"), "--train", str(folder / "train"),
                                  "--batch-size", str(sizes["lightly_batch"] or sizes["batch"]), "--small-stem",
                                  "--workers", str(workers),
                                  *sizes["lightly"], "trainer.precision=bf16", *sizes["backbone"],
                                  *sizes["lightly_overrides"]],
               CAPS["lightly"] * sizes.get("cap_scale", 1.0), last_json)
    else:
        r.record("lightly_simclr", {"status": "skipped", "wall_s": 0.0,
                                    "error": "lightly is not installed (pip install -e '.[bench]')"})

    train_part(r, py, sizes, data_flags, common)


def _has_lightly() -> bool:
    import importlib.util

    return importlib.util.find_spec("lightly") is not None


def env_info() -> dict:
    """Versions and the device, as the parts will see them (the ``env`` part runs this)."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def ver(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    cuda = torch.cuda.is_available()
    return {"torch": torch.__version__, "cuda": cuda, "cuda_version": torch.version.cuda,
            "device_name": torch.cuda.get_device_name(0) if cuda else "cpu",
            "device_count": torch.cuda.device_count(), "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
            **{name: ver(name) for name in ("timm", "accelerate", "faiss-cpu", "lightly")}}


def train_part(r: Runner, py: str, sizes: dict, data_flags: list[str], common: list[str]) -> None:
    """SimCLR for as many whole epochs as the time left allows (at least one step), then kNN."""
    bench = r.report["parts"].get("bench_simclr_eager", {}).get("result") or {}
    batch = sizes["batch"]
    step_s = batch / bench["images_per_s"] * 1.15 if bench.get("images_per_s") else None  # 15 % margin: logging
    n_train = _train_size(r, sizes)
    per_epoch = max(1, n_train // batch)
    usable = r.left() - sizes["overhead_s"]
    steps = max(1, int(usable / step_s)) if step_s else per_epoch  # no measured step: one epoch, timeout guards
    if sizes["max_train_steps"]:
        steps = min(steps, sizes["max_train_steps"])
    epochs = max(1, steps // per_epoch)
    steps = min(steps, epochs * per_epoch) if steps >= per_epoch else steps
    run_dir = r.work / "train-simclr"
    cmd = [py, "-m", "selfsup", "train", "simclr-cifar10", *common, f"trainer.epochs={epochs}",
           f"trainer.warmup_epochs={round(min(10.0, epochs / 10), 2)}", f"trainer.max_steps={steps}",
           f"trainer.checkpoint_every={steps}", "eval.linear=false", "eval.knn_k=[20,200]", "run.plots=false",
           "run.tensorboard=false", "resume=never", f"run.dir={run_dir}"]
    plan = {"epochs": epochs, "max_steps": steps, "steps_per_epoch": per_epoch, "train_images": n_train,
            "assumed_step_s": round(step_s, 4) if step_s else None, "time_left_s": round(r.left(), 1)}

    def parse(_: str) -> dict:
        knn = json.loads((run_dir / "eval.json").read_text())
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        done = max((row.get("step", 0) for row in rows), default=0)
        return {**plan, "steps_logged": done, **{k: v["top1"] for k, v in knn.items() if "top1" in v}}

    r.part("train_simclr", cmd, max(r.left() - 5, 10), parse, reserve=0)


def _train_size(r: Runner, sizes: dict) -> int:
    data = r.report["parts"].get("data", {}).get("result") or {}
    return data.get("train") or sizes["synthetic_samples"]


if __name__ == "__main__":
    sys.exit(main())
