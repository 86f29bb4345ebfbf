"""Ctrl-C during the first decode of an ImageFolder: ``selfsup train`` stops within seconds (not after
the whole folder), prints one line, exits 130 and leaves no cache that a rerun would take as complete."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image

IMAGES = 1200  # about 11 s of decoding on 2 idle cores: far longer than an interrupted run may take


def _folder(root):
    """2 classes of large, cheap-to-write PNGs (one smooth image, copied): each takes ~20 ms to decode."""
    y, x = np.mgrid[0:1536, 0:1536]
    pixels = np.stack([x * 255 // 1535, y * 255 // 1535, (x + y) % 256], -1).astype(np.uint8)
    first = root / "a" / "0000.png"
    first.parent.mkdir(parents=True)
    (root / "b").mkdir()
    Image.fromarray(pixels).save(first, compress_level=1)
    for i in range(1, IMAGES):
        shutil.copyfile(first, root / "ab"[i % 2] / f"{i:04d}.png")


def test_ctrl_c_during_decode_stops_promptly_and_caches_nothing(tmp_path):
    root, cache = tmp_path / "images", tmp_path / "cache"
    _folder(root)
    err_file = tmp_path / "stderr.txt"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "SELFSUP_PROGRESS_SECONDS": "0.5"}  # a progress line: decoding
    with open(err_file, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "selfsup", "train", "data.name=imagefolder", f"data.train={root}",
             f"data.val={root}", "data.image_size=32", f"data.cache_dir={cache}", "trainer.max_steps=1",
             "eval.at_end=false", "run.plots=false", "run.tensorboard=false", f"run.dir={tmp_path / 'run'}"],
            stdout=subprocess.DEVNULL, stderr=err, env=env)
        deadline = time.monotonic() + 180
        while "decoding" not in err_file.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, err_file.read_text()[-2000:]
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        try:
            proc.wait(timeout=60)
        finally:
            proc.kill()
        took = time.monotonic() - sent
    lines = [line for line in err_file.read_text().splitlines() if not line.startswith("decoding")]
    assert (proc.returncode, lines) == (130, ["selfsup: interrupted"])
    assert took < 5, f"Ctrl-C took {took:.1f} s to stop the decode"
    assert not list(cache.rglob("*.npy")) and not list(cache.rglob("*.json")), "a partial decode was cached"
