"""The collectives (selfsup.core.distributed), each on 2 CPU processes (gloo) against one process on the
global batch: logged means, path and weight broadcasts, SyncBN, the row gather and shard bounds.
The processes are the two session groups of tests/conftest.py (``two_and_one``, ``eval_ranks``)."""
from pathlib import Path

import pytest
import torch

from support.eval_group import BLOCK_ROWS, ROWS, module_for_broadcast
from support.training_group import REL, syncbn, syncbn_inputs


# ----------------------------------------------------------------------------- training group


@pytest.mark.slow
@pytest.mark.distributed
def test_logged_scalars_are_global_batch_means_and_paths_come_from_rank_0(two_and_one):
    for rank_result in two_and_one[:2]:
        assert rank_result["collectives"]["means"] == {"loss": 0.5, "acc": 1.0, "skipped": None}
        assert rank_result["collectives"]["path"] == Path("/ckpt/from-rank-0.pt")


@pytest.mark.slow
@pytest.mark.distributed
def test_sync_batchnorm_in_fp32_matches_batchnorm_on_the_global_batch(two_and_one):
    """2-process fp32 SyncBN against float64 BatchNorm on the global batch: outputs, input and weight
    gradients, running statistics within 1e-5 of each tensor's scale, on activations far from zero
    mean (x ~ 40 +- 3, where a one-pass E[x^2] - E[x]^2 variance errs by 2e-5, the two-pass by 1e-7)."""
    x, g = syncbn_inputs()
    exact = syncbn(torch.nn.BatchNorm2d(3).double(), x.double(), g.double())
    r0, r1 = (r["collectives"]["syncbn"] for r in two_and_one[:2])
    for key in exact:
        ours = [torch.cat([r0[key], r1[key]])] if key in ("y", "x_grad") else [r0[key], r1[key]]  # rows / replicas
        for value in ours:
            err = float((value.double() - exact[key]).abs().max() / exact[key].abs().max())
            assert err <= REL, f"{key}: SyncBN differs by {err:.2e} of its scale"


def test_convert_sync_batchnorm_shares_state_keeps_keys_and_honours_exclusions():
    from timm.layers import BatchNormAct2d

    from selfsup.core.distributed import SyncBatchNorm, convert_sync_batchnorm

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.Sequential(torch.nn.BatchNorm1d(4)), BatchNormAct2d(4))
    keys, weight, running = list(model.state_dict()), model[1].weight, model[1].running_mean
    with pytest.warns(UserWarning, match="BatchNormAct2d"):  # a BN subclass is never swapped silently
        convert_sync_batchnorm(model, exclude=("2",))
    assert type(model[1]) is SyncBatchNorm and type(model[2][0]) is torch.nn.BatchNorm1d
    assert model[1].weight is weight and model[1].running_mean is running  # optimizer / EMA see the same tensors
    assert list(model.state_dict()) == keys  # checkpoints and exports load either way
    x = torch.randn(5, 4, 6, 6)
    assert torch.equal(model[1](x), torch.nn.functional.batch_norm(x, None, None, weight, model[1].bias, True))


# ----------------------------------------------------------------------------- evaluation group


@pytest.mark.slow
@pytest.mark.distributed
def test_shard_bounds_split_rows_contiguously_differing_by_at_most_one(eval_ranks):
    r0, r1 = (r["rows"]["bounds"] for r in eval_ranks[0])
    assert (r0[BLOCK_ROWS], r1[BLOCK_ROWS]) == ((0, 4), (4, 7))
    assert (r0[ROWS], r1[ROWS]) == ((0, 5), (5, 9))
    assert (r0[1], r1[1]) == ((0, 1), (1, 1))  # fewer rows than eval_ranks: an empty shard


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("case", ["shards", "short_first", "empty_first"])
def test_gather_rows_returns_every_row_once_in_order_on_every_rank(eval_ranks, case):
    expected = torch.arange(BLOCK_ROWS * 3, dtype=torch.float32).view(BLOCK_ROWS, 3)
    for rank_result in eval_ranks[0]:
        gathered = rank_result["rows"][case]
        assert gathered.shape == expected.shape  # no padding row kept, none repeated
        assert torch.equal(gathered, expected)


@pytest.mark.slow
@pytest.mark.distributed
def test_gather_rows_refuses_a_wrong_total_on_every_rank(eval_ranks):
    for rank_result in eval_ranks[0]:
        assert "expected 8" in rank_result["rows"]["wrong_total"]


@pytest.mark.slow
@pytest.mark.distributed
def test_broadcast_module_state_gives_every_rank_rank_0s_weights(eval_ranks):
    rank0 = module_for_broadcast(seed=0).state_dict()
    rank1 = module_for_broadcast(seed=1).state_dict()
    assert not torch.equal(rank0["0.weight"], rank1["0.weight"])  # they did differ before
    for rank_result in eval_ranks[0]:
        assert rank_result["broadcast"].keys() == rank0.keys()
        for key, value in rank0.items():
            assert torch.equal(rank_result["broadcast"][key], value), key
