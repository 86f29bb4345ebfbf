"""Decode + resize to a 224-px canvas: images/s per worker core, ours vs torchvision's ImageFolder pipeline.

    python eval/scripts/decode_bench.py [--images 300] [--rounds 5] [--size 224] [--out eval/results/...md]

Generates ``--images`` JPEGs of ImageNet's typical size (500 x 375, quality 90) that compress like
photos: a smooth random field (a 16 x 12 grid of random colours, bicubic-upsampled), a dozen random
filled ellipses and rectangles, a Gaussian blur (radius 1.5) and Gaussian pixel noise (sigma 6); about
55 kB each, as ImageNet's average. Then, single process, one thread (a DataLoader worker's setting),
on the same files:

* **torchvision**: ``torchvision.datasets.ImageFolder`` (PIL loader) + ``RandomResizedCrop(224)`` +
  ``ToTensor()``, item by item: what a torchvision training loop's worker does per image.
* **ours**: the file's bytes through :func:`selfsup.data.decode.decode_canvas` (DCT scaling where it
  pays, centre square, uint8 bilinear resize to the canvas): what a streaming or shards worker does;
  the random crop then runs batched on the device. Also with simplejpeg switched off (PIL only), and
  read from tar shards (``selfsup data shards``, random access by offset).

Rates are images per CPU-second of the process (``time.process_time``), so a CPU shared with other
jobs slows the wall clock but not the rate much; rounds interleave the pipelines and the table gives
medians. Writes a markdown table (machine, date, exact command) to ``--out``.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image, ImageDraw, ImageFilter

import selfsup.data.decode as decode_module
from selfsup.data.decode import JPEG_DECODER, decode_canvas
from selfsup.data.shard_writer import write_shards
from selfsup.data.shards import ShardSplit


def make_photos(root: Path, count: int, seed: int = 0, size: tuple[int, int] = (500, 375)) -> list[Path]:
    """``count`` photo-like JPEGs (quality 90) in ``root/<class>/`` (two classes), as described above."""
    rng = np.random.default_rng(seed)
    w, h = size
    paths = []
    for i in range(count):
        field = rng.random((12, 16, 3)) * 255
        img = Image.fromarray(field.astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(img)
        for _ in range(12):
            x0, y0, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(10, 120))
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x0 + r, y0 + int(r * 0.8)], fill=colour)
        pixels = np.asarray(img.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.float32)
        pixels = np.clip(pixels + rng.normal(0, 6, pixels.shape), 0, 255).astype(np.uint8)
        path = root / f"class{i % 2}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def pipelines(root: Path, shards_dir: Path, size: int) -> dict:
    """name -> a function that decodes every image once and returns how many it did."""
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    reference = ImageFolder(str(root), transform=T.Compose([T.RandomResizedCrop(size), T.ToTensor()]))
    files = [Path(p) for p, _ in reference.samples]
    shards = ShardSplit.open(str(shards_dir / "train-*.tar"), image_size=size, cache_dir=shards_dir / "cache")

    def torchvision_side() -> int:
        for i in range(len(reference)):
            reference[i]
        return len(reference)

    def ours() -> int:
        for path in files:
            decode_canvas(path.read_bytes(), size)
        return len(files)

    def ours_pil() -> int:
        saved, decode_module.simplejpeg = decode_module.simplejpeg, None
        try:
            return ours()
        finally:
            decode_module.simplejpeg = saved

    def ours_shards() -> int:
        for i in range(len(shards)):
            decode_canvas(shards.read(i), size)
        return len(shards)

    found = {"torchvision ImageFolder + RandomResizedCrop + ToTensor": torchvision_side,
             f"ours: decode_canvas ({JPEG_DECODER})": ours}
    if decode_module.simplejpeg is not None:
        found["ours: decode_canvas (PIL only, simplejpeg off)"] = ours_pil
    found[f"ours: from tar shards ({JPEG_DECODER})"] = ours_shards
    return found


def measure(funcs: dict, rounds: int) -> dict:
    """Interleaved rounds; per pipeline the median images per CPU-second and per wall-second."""
    cpu = {name: [] for name in funcs}
    wall = {name: [] for name in funcs}
    for name, fn in funcs.items():  # warm-up: file cache, imports, allocators
        fn()
    for _ in range(rounds):
        for name, fn in funcs.items():
            c0, w0 = time.process_time(), time.perf_counter()
            n = fn()
            cpu[name].append(n / max(time.process_time() - c0, 1e-9))
            wall[name].append(n / max(time.perf_counter() - w0, 1e-9))
    return {name: (statistics.median(cpu[name]), statistics.median(wall[name])) for name in funcs}


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return f"{model}, {os.cpu_count()} logical cores, load average {load} at the start"


def table(results: dict, args, started: str, info: str) -> str:
    base_cpu, base_wall = next(iter(results.values()))
    lines = [f"# JPEG decode to a {args.size}-px canvas: images/s per worker core ({started[:10]})", "",
             f"- command: `{' '.join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])}`",
             f"- machine: {info}",
             f"- date: {started} UTC",
             f"- versions: torch {torch.__version__}, torchvision {torchvision.__version__}, Pillow {PIL.__version__}, "
             f"JPEG decoder {JPEG_DECODER}",
             f"- images: {args.images} generated photo-like JPEGs, 500 x 375, quality 90 (smooth random field + shapes "
             "+ blur + noise: see the script's docstring), the same files for every row",
             f"- one process, torch.set_num_threads(1); {args.rounds} interleaved rounds, medians. Rates are images per "
             "CPU-second of the process (`time.process_time`): the CPU is shared with a training run, which slows "
             "the wall clock (last column) more than the CPU-time rate; ratios are within the same run.", "",
             "| pipeline | images/s per core (CPU time) | x torchvision | images/s (wall) |",
             "| --- | ---: | ---: | ---: |"]
    for name, (cpu, wall) in results.items():
        lines.append(f"| {name} | {cpu:.0f} | {cpu / base_cpu:.2f} | {wall:.0f} |")
    lines += ["", "torchvision's row ends in a float tensor after a random crop; ours in the uint8 canvas that the "
              "training device then crops at random (batched), so both rows cover a worker's whole share of the "
              "per-image work."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--out", default=f"eval/results/decode-bench-cpu-{datetime.date.today()}.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    info = machine()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "photos"
        make_photos(root, args.images)
        write_shards(root, Path(tmp) / "shards", shard_size=100, progress=False)
        results = measure(pipelines(root, Path(tmp) / "shards", args.size), args.rounds)
    text = table(results, args, started, info)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return results


if __name__ == "__main__":
    main()
