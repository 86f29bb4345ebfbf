"""Jigsaw (Noroozi & Favaro 2016): tiles, the method's geometry and loss, and puzzles drawn alike on 2
processes. The permutation sets: tests/methods/test_jigsaw_permutations.py."""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from selfsup.core.errors import ConfigError
from selfsup.methods.jigsaw import (
    extract_tiles,
    normalize_tiles,
    sample_tile_offsets,
    shuffle_tiles,
)
from support.methods import build

pytestmark = pytest.mark.usefixtures("selfsup_cache")


# ----------------------------------------------------------------------------- tiles


def assemble(tiles: torch.Tensor) -> torch.Tensor:
    """[B, 9, C, t, t] in cell order -> [B, C, 3t, 3t] (slow loop)."""
    b, _, c, t, _ = tiles.shape
    out = torch.empty(b, c, 3 * t, 3 * t)
    for i in range(9):
        r, col = divmod(i, 3)
        out[:, :, r * t : (r + 1) * t, col * t : (col + 1) * t] = tiles[:, i]
    return out


@pytest.mark.parametrize("side", [30, 32])  # 32: the 2-px remainder is unused
def test_tiles_reassemble_the_crop_under_the_inverse_permutation(side):
    crops = torch.randn(4, 3, side, side)
    perms = torch.stack([torch.randperm(9) for _ in range(4)])
    puzzles = shuffle_tiles(extract_tiles(crops, 10), perms)  # gaps 0, no jitter
    for b in range(4):
        for i in range(9):  # position i holds the tile of cell perms[b, i]
            r, c = divmod(int(perms[b, i]), 3)
            assert torch.equal(puzzles[b, i], crops[b, :, 10 * r : 10 * r + 10, 10 * c : 10 * c + 10])
    assert torch.equal(assemble(shuffle_tiles(puzzles, perms.argsort(dim=1))), crops[..., :30, :30])


def test_jittered_tiles_match_a_loop_reference():
    gen = torch.Generator().manual_seed(0)
    crops = torch.randn(5, 2, 36, 36)
    offsets = sample_tile_offsets(5, 12, 9, jitter=True, generator=gen)
    assert offsets.shape == (5, 9, 2) and offsets.min() >= 0 and offsets.max() <= 3
    assert len(torch.unique(offsets.view(-1, 2), dim=0)) > 1  # positions vary per tile and sample
    tiles = extract_tiles(crops, 9, offsets)
    for b in range(5):
        for i in range(9):
            y, x = 12 * (i // 3) + int(offsets[b, i, 0]), 12 * (i % 3) + int(offsets[b, i, 1])
            assert torch.equal(tiles[b, i], crops[b, :, y : y + 9, x : x + 9])
    centred = sample_tile_offsets(2, 12, 9, jitter=False)
    assert (centred == 1).all()
    with pytest.raises(ValueError):
        sample_tile_offsets(2, 12, 13)


def test_each_tile_is_standardised_by_its_own_statistics():
    tiles = 3 + 5 * torch.randn(4, 9, 3, 7, 7)
    tiles[0, 0] = 0.25  # a flat tile becomes zeros, not NaN
    out = normalize_tiles(tiles)
    mean = out.mean(dim=(2, 3, 4))
    std = out.std(dim=(2, 3, 4), correction=0)
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-5)
    assert torch.allclose(std.flatten()[1:], torch.ones(35), atol=1e-5)
    assert torch.equal(out[0, 0], torch.zeros(3, 7, 7))
    expected = (tiles[1, 2] - tiles[1, 2].mean()) / tiles[1, 2].std(correction=0)
    assert torch.allclose(out[1, 2], expected, atol=1e-5)


# ----------------------------------------------------------------------------- jigsaw method


def test_jigsaw_geometry_heads_and_one_backbone_call_on_all_tiles():
    method = build("jigsaw", size=16, crop_size=48, num_permutations=24, head_hidden_dim=32)
    assert (method.crop_size, method.cell, method.tile) == (48, 16, 14)
    assert method.permutations.shape == (24, 9) and "permutations" in method.state_dict()
    assert method.views[0][0].size == 48 and method.views[0][1] == 1
    features = method.backbone.num_features
    assert method.classifier(torch.randn(4, 9 * features)).shape == (4, 24)
    calls = []
    method.backbone.register_forward_hook(lambda module, args, out: calls.append((args[0].shape, out.shape)))
    out = method([torch.randn(4, 1, 48, 48).expand(4, 3, 48, 48)], torch.zeros(4, dtype=torch.long), {})
    assert calls == [((36, 3, 14, 14), (36, features))]
    assert out["loss"].ndim == 0 and 0 <= out["jigsaw_acc"] <= 1


def test_jigsaw_loss_matches_a_per_puzzle_reference():
    method = build("jigsaw", size=30, num_permutations=10, head_hidden_dim=16, jitter=False).eval()
    crops = torch.randn(3, 3, 30, 30)
    torch.manual_seed(7)
    out = method([crops], torch.zeros(3, dtype=torch.long), {})
    torch.manual_seed(7)
    _, target = method.make_puzzles(crops)  # the same draws as inside the step
    terms = []
    for b in range(3):
        perm = method.permutations[target[b]]
        tiles = []
        for i in range(9):  # position i shows the (centred) tile of cell perm[i], standardised
            r, c = divmod(int(perm[i]), 3)
            t = crops[b, :, 10 * r : 10 * r + 9, 10 * c : 10 * c + 9]  # tile 9 in a 10-px cell, offset (10 - 9) // 2
            tiles.append(((t - t.mean()) / t.std(correction=0)).unsqueeze(0))
        logits = method.classifier(torch.cat([method.backbone(t) for t in tiles], dim=1))
        terms.append(-F.log_softmax(logits, dim=1)[0, target[b]])
    assert torch.allclose(out["loss"], torch.stack(terms).mean(), atol=1e-5)


def test_jigsaw_rejects_a_tile_larger_than_its_cell():
    with pytest.raises(ConfigError, match="tile_size"):
        build("jigsaw", size=16, tile_size=6, num_permutations=10)


def _puzzle_worker(rank: int, world: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world)
    try:
        method = build("jigsaw", size=30, num_permutations=10, head_hidden_dim=16)
        crops = torch.randn(8, 3, 30, 30, generator=torch.Generator().manual_seed(1))
        torch.manual_seed(5)  # the run seeds every rank alike
        puzzles, target = method.make_puzzles(crops[rank * 4 : (rank + 1) * 4])
        torch.save((puzzles, target), f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_processes_draw_the_puzzles_of_one_process_on_the_global_batch(tmp_path):
    # fork: the children inherit the imported modules (spawn would re-import torch and timm)
    mp.start_processes(_puzzle_worker, args=(2, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    (p0, t0), (p1, t1) = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    method = build("jigsaw", size=30, num_permutations=10, head_hidden_dim=16)
    crops = torch.randn(8, 3, 30, 30, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    puzzles, target = method.make_puzzles(crops)
    assert torch.equal(torch.cat([t0, t1]), target) and torch.equal(torch.cat([p0, p1]), puzzles)
    assert not torch.equal(t0, t1)  # the ranks' draws differ
