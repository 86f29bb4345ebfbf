"""End-of-training evaluation over several processes: each rank extracts its share, nobody counts twice.

One group of 2 CPU processes (gloo), spawned once for the module as in ``test_distributed.py``,
runs every check; meanwhile this (single) process computes the references. The checks: the
row gather over unequal blocks, sharded feature extraction (equal to one process's, each rank
running the encoder on its 5 or 4 rows of 9), the feature cache (rank 0 alone reads and writes
it; a hit reaches the other rank without a forward), the broadcast of rank 0's weights, the
protocols' features, and ``selfsup train`` with the random-init baseline.
"""
from __future__ import annotations

import json
import os
import traceback
from datetime import timedelta
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.multiprocessing as mp
from test_distributed import TRAIN, WORLD, _free_port, join_ranks
from test_evaluation import MEAN, STD, tiny_net
from torch import nn

ROWS = 9  # odd: shards of 5 and 4 rows
BATCH = 2  # smaller than a shard: several batches per rank, the last one short
BLOCK_ROWS = 7


def _images() -> torch.Tensor:
    """uint8 [ROWS, 3, 6, 6], the same in every process."""
    return torch.randint(0, 256, (ROWS, 3, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def _counted(net: nn.Module) -> list[int]:
    """The batch sizes ``net`` is run on from now on."""
    seen: list[int] = []
    net.register_forward_pre_hook(lambda _module, args: seen.append(args[0].shape[0]))
    return seen


def _splits():
    """(train [20 images], val [11 images]) with 3 classes whose brightness differs."""
    from selfsup.data import ImageDataset

    def split(n: int, seed: int) -> ImageDataset:
        g = torch.Generator().manual_seed(seed)
        labels = torch.arange(n) % 3
        images = (torch.randint(0, 100, (n, 3, 6, 6), generator=g) + 70 * labels.view(n, 1, 1, 1)).to(torch.uint8)
        return ImageDataset(images, labels, ["a", "b", "c"], MEAN, STD)

    return split(20, 1), split(11, 2)


class _WithHead(nn.Module):
    """A tiny supervised model: ``classify`` gives logits [B, 3]."""

    def __init__(self):
        super().__init__()
        self.encoder = tiny_net()
        self.head = nn.Linear(8, 3)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def _module_for_broadcast(seed: int) -> nn.Module:
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
    sharded = extract_features(net, _images(), MEAN, STD, batch_size=BATCH, progress=False, shard=True)
    out = {"sharded": sharded, "sharded_batches": list(seen)}
    seen.clear()
    out["unsharded"] = extract_features(net, _images(), MEAN, STD, batch_size=BATCH, progress=False)
    out["unsharded_batches"] = list(seen)
    # Each rank names its own cache folder: only rank 0's may ever be created.
    cache = out_dir / f"cache-rank{rank()}"
    kw = dict(cache_dir=cache, dataset_id="train", batch_size=BATCH, progress=False, shard=True)
    seen.clear()
    out["cached_first"] = cached_features(net, _images(), MEAN, STD, **kw)
    out["cached_first_batches"] = list(seen)
    seen.clear()
    out["cached_again"] = cached_features(net, _images(), MEAN, STD, **kw)
    out["cached_again_batches"] = list(seen)
    out["cache_files"] = sorted(p.name for p in cache.iterdir()) if cache.exists() else None
    return out


def _protocol_checks() -> dict:
    from selfsup.config import EvalConfig
    from selfsup.evaluation.protocols import evaluation_features

    train, val = _splits()
    model = _WithHead()
    return evaluation_features(model.encoder, train, val, EvalConfig(knn_k=[3], batch_size=BATCH), progress=False,
                               classifier=model, shard=True)


def _broadcast_checks() -> dict:
    from selfsup.core.distributed import broadcast_module_state, rank

    module = _module_for_broadcast(seed=rank())
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


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """([rank 0's results, rank 1's], the folder the ranks wrote in)."""
    out_dir = tmp_path_factory.mktemp("dist-eval")
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, str(out_dir))) for r in range(WORLD)]
    for p in procs:
        p.start()
    return join_ranks(procs, out_dir), out_dir


# ----------------------------------------------------------------------------- the checks


def test_shard_bounds_split_rows_contiguously_differing_by_at_most_one(ranks):
    r0, r1 = (r["rows"]["bounds"] for r in ranks[0])
    assert (r0[BLOCK_ROWS], r1[BLOCK_ROWS]) == ((0, 4), (4, 7))
    assert (r0[ROWS], r1[ROWS]) == ((0, 5), (5, 9))
    assert (r0[1], r1[1]) == ((0, 1), (1, 1))  # fewer rows than ranks: an empty shard


@pytest.mark.parametrize("case", ["shards", "short_first", "empty_first"])
def test_gather_rows_returns_every_row_once_in_order_on_every_rank(ranks, case):
    expected = torch.arange(BLOCK_ROWS * 3, dtype=torch.float32).view(BLOCK_ROWS, 3)
    for rank_result in ranks[0]:
        gathered = rank_result["rows"][case]
        assert gathered.shape == expected.shape  # no padding row kept, none repeated
        assert torch.equal(gathered, expected)


def test_gather_rows_refuses_a_wrong_total_on_every_rank(ranks):
    for rank_result in ranks[0]:
        assert "expected 8" in rank_result["rows"]["wrong_total"]


def test_sharded_extraction_equals_one_process_and_runs_each_row_once(ranks):
    from selfsup.evaluation.features import extract_features

    reference = extract_features(tiny_net(), _images(), MEAN, STD, batch_size=BATCH, progress=False)
    assert reference.shape[0] == ROWS
    for rank_result, own_rows in zip(ranks[0], (5, 4)):
        ext = rank_result["extraction"]
        assert ext["sharded"].shape == reference.shape
        torch.testing.assert_close(ext["sharded"], reference, atol=1e-6, rtol=1e-6)
        assert sum(ext["sharded_batches"]) == own_rows and max(ext["sharded_batches"]) <= BATCH
        # Without the flag each rank still runs everything itself: sharding is opt-in.
        assert sum(ext["unsharded_batches"]) == ROWS
        torch.testing.assert_close(ext["unsharded"], reference, atol=1e-6, rtol=1e-6)


def test_sharded_cache_is_written_and_read_by_rank_0_alone(ranks):
    reference = ranks[0][0]["extraction"]["sharded"]
    r0, r1 = (r["extraction"] for r in ranks[0])
    assert len(r0["cache_files"]) == 1 and r0["cache_files"][0].startswith("features-")  # no temporary file left
    assert r1["cache_files"] is None  # rank 1 never touched its cache folder
    for ext, own_rows in ((r0, 5), (r1, 4)):
        assert sum(ext["cached_first_batches"]) == own_rows  # a miss: extracted in shards
        assert ext["cached_again_batches"] == []  # a hit on rank 0, sent to rank 1: nobody ran the encoder
        torch.testing.assert_close(ext["cached_first"], reference, atol=1e-6, rtol=1e-6)
        assert torch.equal(ext["cached_again"], ext["cached_first"])


def test_protocol_features_and_classifier_logits_match_one_process(ranks):
    from selfsup.config import EvalConfig
    from selfsup.evaluation.protocols import evaluate, evaluation_features

    train, val = _splits()
    model = _WithHead()
    cfg = EvalConfig(knn_k=[3], batch_size=BATCH)
    reference = evaluation_features(model.encoder, train, val, cfg, progress=False, classifier=model)
    assert {k: v.shape[0] for k, v in reference.items()} == {"train": 20, "val": 11, "classifier": 11}
    for rank_result in ranks[0]:
        assert rank_result["protocols"].keys() == reference.keys()
        for key, value in reference.items():
            torch.testing.assert_close(rank_result["protocols"][key], value, atol=1e-6, rtol=1e-6)
    # The protocols on the gathered features give what evaluate() extracting by itself gives.
    direct = evaluate(model.encoder, train, val, cfg, progress=False, classifier=model)
    assert evaluate(model.encoder, train, val, cfg, progress=False, classifier=model,
                    features=ranks[0][0]["protocols"]) == direct


def test_broadcast_module_state_gives_every_rank_rank_0s_weights(ranks):
    rank0 = _module_for_broadcast(seed=0).state_dict()
    rank1 = _module_for_broadcast(seed=1).state_dict()
    assert not torch.equal(rank0["0.weight"], rank1["0.weight"])  # they did differ before
    for rank_result in ranks[0]:
        assert rank_result["broadcast"].keys() == rank0.keys()
        for key, value in rank0.items():
            assert torch.equal(rank_result["broadcast"][key], value), key


def test_two_process_train_shards_evaluation_and_rank_0_alone_reports(ranks):
    from safetensors import safe_open

    from selfsup.config import load_config
    from selfsup.data import open_split
    from selfsup.engine.build import build_method
    from selfsup.evaluation.features import extract_features
    from selfsup.evaluation.protocols import evaluate
    from selfsup.runs.export import load_encoder

    (r0, r1), out_dir = ranks
    run = out_dir / "run"
    assert r1["train"] == {} and "knn_k3" in r0["train"]
    assert json.loads((run / "eval.json").read_text()) == r0["train"]
    # The cached features (rank 0's gathered train and val features) are the exported encoder's.
    cfg = load_config("simclr-digits", [*TRAIN, "eval.random_baseline=true", f"run.dir={run}"])
    train, val = open_split(cfg.data, "train", seed=cfg.trainer.seed), open_split(cfg.data, "val", seed=cfg.trainer.seed)
    encoder = load_encoder(run / "encoder")
    files = sorted((run / "features").glob("features-*.safetensors"))
    assert len(files) == 2
    cached = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            cached[f.metadata()["dataset_id"]] = safetensors.torch.load_file(str(file))["features"]
    for name, data in (("train", train), ("val", val)):
        expected = extract_features(encoder, data.images, train.mean, train.std, progress=False)
        torch.testing.assert_close(cached[name], expected, atol=1e-5, rtol=1e-5)
    # The random-init baseline: the same encoder as one process builds, evaluated on all the rows.
    baseline = json.loads((run / "eval_random_init.json").read_text())
    single = evaluate(build_method(cfg, train).encoder, train, val, cfg.eval, progress=False)
    assert baseline.keys() == single.keys()
    for key in single:  # features agree to ~1e-6: at most a near-tie may flip one prediction
        assert abs(baseline[key]["top1"] - single[key]["top1"]) <= 1 / len(val) + 1e-9, (key, baseline, single)
