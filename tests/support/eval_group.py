"""The 2-process evaluation group: each rank extracts its share, nobody counts twice.

One group of 2 CPU processes (gloo), spawned once per test session (the ``eval_ranks`` fixture in
tests/conftest.py), runs every check; meanwhile the test process computes the references. The
checks: the row gather over unequal blocks, sharded feature extraction (equal to one process's, each
rank running the encoder on its 5 or 4 rows of 9), the feature cache (rank 0 alone reads and writes
it; a hit reaches the other rank without a forward), the broadcast of rank 0's weights, the
protocols' features, and ``selfsup train`` with the random-init baseline. They are in
tests/core/test_distributed.py, tests/evaluation/test_features.py, tests/evaluation/test_protocols.py
and tests/runs/test_train.py.
"""
from __future__ import annotations

import os
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.multiprocessing as mp
from torch import nn

from support import MEAN, STD, WORLD, free_port, join_ranks, tiny_net
from support.training_group import TRAIN

ROWS = 9  # odd: shards of 5 and 4 rows
BATCH = 2  # smaller than a shard: several batches per rank, the last one short
BLOCK_ROWS = 7


def group_images() -> torch.Tensor:
    """uint8 [ROWS, 3, 6, 6], the same in every process."""
    return torch.randint(0, 256, (ROWS, 3, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def _counted(net: nn.Module) -> list[int]:
    """The batch sizes ``net`` is run on from now on."""
    seen: list[int] = []
    net.register_forward_pre_hook(lambda _module, args: seen.append(args[0].shape[0]))
    return seen


def splits():
    """(train [20 images], val [11 images]) with 3 classes whose brightness differs."""
    from selfsup.data import ImageDataset

    def split(n: int, seed: int) -> ImageDataset:
        g = torch.Generator().manual_seed(seed)
        labels = torch.arange(n) % 3
        images = (torch.randint(0, 100, (n, 3, 6, 6), generator=g) + 70 * labels.view(n, 1, 1, 1)).to(torch.uint8)
        return ImageDataset(images, labels, ["a", "b", "c"], MEAN, STD)

    return split(20, 1), split(11, 2)


class WithHead(nn.Module):
    """A tiny supervised model: ``classify`` gives logits [B, 3]."""

    def __init__(self):
        super().__init__()
        self.encoder = tiny_net()
        self.head = nn.Linear(8, 3)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def module_for_broadcast(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    module = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    module[1].running_mean.fill_(float(seed))  # a buffer, too
    return module


# ----------------------------------------------------------------------------- in the 2 processes


def _rows_checks() -> dict:
    from selfsup.core.distributed import gather_rows, rank, shard_bounds

    rows = torch.arange(BLOCK_ROWS * 3, dtype=torch.float32).view(BLOCK_ROWS, 3)
    start, stop = shard_bounds(BLOCK_ROWS)
    cut = 2  # rank 0 shorter than rank 1
    out = {
        "bounds": {n: shard_bounds(n) for n in (BLOCK_ROWS, ROWS, 1)},
        "shards": gather_rows(rows[start:stop], BLOCK_ROWS),
        "short_first": gather_rows(rows[:cut] if rank() == 0 else rows[cut:], BLOCK_ROWS),
        "empty_first": gather_rows(rows[:0] if rank() == 0 else rows, BLOCK_ROWS),
    }
    try:
        gather_rows(rows[start:stop], BLOCK_ROWS + 1)
        out["wrong_total"] = "no error"
    except ValueError as err:
        out["wrong_total"] = str(err)
    return out


def _extraction_checks(out_dir: Path) -> dict:
    from selfsup.core.distributed import rank
    from selfsup.evaluation.features import cached_features, extract_features

    net = tiny_net()
    seen = _counted(net)
    sharded = extract_features(net, group_images(), MEAN, STD, batch_size=BATCH, progress=False, shard=True)
    out = {"sharded": sharded, "sharded_batches": list(seen)}
    seen.clear()
    out["unsharded"] = extract_features(net, group_images(), MEAN, STD, batch_size=BATCH, progress=False)
    out["unsharded_batches"] = list(seen)
    # Each rank names its own cache folder: only rank 0's may ever be created.
    cache = out_dir / f"cache-rank{rank()}"
    kw = dict(cache_dir=cache, dataset_id="train", batch_size=BATCH, progress=False, shard=True)
    seen.clear()
    out["cached_first"] = cached_features(net, group_images(), MEAN, STD, **kw)
    out["cached_first_batches"] = list(seen)
    seen.clear()
    out["cached_again"] = cached_features(net, group_images(), MEAN, STD, **kw)
    out["cached_again_batches"] = list(seen)
    out["cache_files"] = sorted(p.name for p in cache.iterdir()) if cache.exists() else None
    return out


def _protocol_checks() -> dict:
    from selfsup.config import EvalConfig
    from selfsup.evaluation.protocols import evaluation_features

    train, val = splits()
    model = WithHead()
    return evaluation_features(model.encoder, train, val, EvalConfig(knn_k=[3], batch_size=BATCH), progress=False,
                               classifier=model, shard=True)


def _broadcast_checks() -> dict:
    from selfsup.core.distributed import broadcast_module_state, rank

    module = module_for_broadcast(seed=rank())
    broadcast_module_state(module)
    return {k: v.clone() for k, v in module.state_dict().items()}


def _train_run(out_dir: Path) -> dict:
    from selfsup.config import load_config
    from selfsup.runs.train import train

    return train(load_config("simclr-digits", [*TRAIN, "eval.random_baseline=true", f"run.dir={out_dir / 'run'}"]))


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    out_dir = Path(out_dir)
    results = {}
    try:
        # A short timeout: a rank left waiting in a collective fails the test instead of hanging it.
        torch.distributed.init_process_group("gloo", timeout=timedelta(seconds=90))
        results["rows"] = _rows_checks()
        results["extraction"] = _extraction_checks(out_dir)
        results["protocols"] = _protocol_checks()
        results["broadcast"] = _broadcast_checks()
        results["train"] = _train_run(out_dir)
    except BaseException:
        results["error"] = traceback.format_exc()
    torch.save(results, out_dir / f"rank{rank}.pt")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def run_group(out_dir: Path) -> tuple[list[dict], Path]:
    """([rank 0's results, rank 1's], the folder the ranks wrote in)."""
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, str(out_dir))) for r in range(WORLD)]
    for p in procs:
        p.start()
    return join_ranks(procs, out_dir), out_dir
