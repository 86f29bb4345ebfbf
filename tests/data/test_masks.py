"""Patch masks (selfsup.data.masks): MAE's random masking, BEiT's block-wise masking, I-JEPA's multi-block
masks; each a function of its generator's seed, which (run seed, step, micro-batch) fix."""
import math
import random

import pytest
import torch

from selfsup.core.errors import ConfigError
from selfsup.data.masks import block_mask, mask_seed, multiblock_masks, process_rows, random_mask, visible_indices


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_random_mask_hides_the_papers_count_per_image_at_uniform_positions():
    mask = random_mask(4000, 16, 0.75, gen())
    assert mask.dtype == torch.bool and mask.shape == (4000, 16)
    assert (mask.sum(1) == 16 - int(16 * 0.25)).all()  # 12 hidden, 4 visible in every image
    assert len({tuple(row.tolist()) for row in mask[:50]}) > 45  # each image its own
    assert mask.float().mean(0).sub(0.75).abs().max() < 0.03  # every position equally likely
    assert (random_mask(3, 196, 0.75, gen()).sum(1) == 196 - 49).all()  # ViT-B/16: 49 visible, as the paper


def test_visible_indices_are_the_unmasked_patches_ascending():
    mask = random_mask(6, 20, 0.6, gen(1))
    keep = visible_indices(mask, 8)
    assert keep.shape == (6, 8) and (keep[:, 1:] > keep[:, :-1]).all()
    for row, idx in zip(mask, keep):
        assert idx.tolist() == (~row).nonzero().flatten().tolist()


def test_same_seed_same_masks_other_seed_other_masks():
    assert torch.equal(random_mask(8, 16, 0.5, gen(3)), random_mask(8, 16, 0.5, gen(3)))
    assert not torch.equal(random_mask(8, 16, 0.5, gen(3)), random_mask(8, 16, 0.5, gen(4)))
    assert torch.equal(block_mask(8, (6, 6), 0.4, gen(3)), block_mask(8, (6, 6), 0.4, gen(3)))
    a, b = multiblock_masks(8, (8, 8), gen(3)), multiblock_masks(8, (8, 8), gen(3))
    assert torch.equal(a.context, b.context) and torch.equal(a.targets, b.targets)


def test_mask_seed_differs_with_run_seed_step_and_micro_batch():
    seeds = {mask_seed(s, step, micro) for s in range(3) for step in range(20) for micro in range(2)}
    assert len(seeds) == 3 * 20 * 2 and all(0 <= s < 2**63 for s in seeds)
    assert mask_seed(1, 5, 0) == mask_seed(1, 5, 0)
    assert [process_rows(4, r, 2) for r in range(2)] == [slice(0, 4), slice(4, 8)]


def test_bad_ratios_are_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"random_mask: the mask ratio must lie in \[0, 1\), got 1.0"):
        random_mask(2, 16, 1.0, gen())
    with pytest.raises(ConfigError, match="keeps none"):
        random_mask(2, 4, 0.9, gen())
    with pytest.raises(ConfigError, match="block_mask"):
        block_mask(2, (4, 4), torch.tensor([0.2, 1.5]), gen())


def _adjacent_pairs(mask: torch.Tensor, grid: int) -> float:
    """Mean number of masked right/down neighbours per masked patch: high for blocks, low for scattered patches."""
    m = mask.view(-1, grid, grid).float()
    pairs = (m[:, :, 1:] * m[:, :, :-1]).sum() + (m[:, 1:] * m[:, :-1]).sum()
    return float(pairs / m.sum())


def test_block_mask_covers_about_the_target_with_blocks():
    """BEiT (Algorithm 1): never more than round(ratio N) patches, nearly always close to it, in blocks."""
    mask = block_mask(256, (14, 14), 0.4, gen(5))
    counts = mask.sum(1)
    target = round(0.4 * 196)
    assert (counts <= target).all() and counts.float().mean() > 0.9 * target
    scattered = random_mask(256, 196, 0.4, gen(5))
    assert _adjacent_pairs(mask, 14) > 1.4 and _adjacent_pairs(scattered, 14) < 0.9


def beit_reference(grid: int, ratio: float, rng: random.Random, min_block: int = 16, attempts: int = 10) -> torch.Tensor:
    """BEiT's Algorithm 1 for one image, written as the paper states it, with the stop rule of its code."""
    mask, target, count = torch.zeros(grid, grid, dtype=torch.bool), round(ratio * grid * grid), 0
    while count < target:
        for _ in range(attempts):
            remaining = target - count
            area = rng.uniform(min_block, remaining)
            aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
            h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 1 <= h < grid and 1 <= w < grid:
                top, left = rng.randint(0, grid - h), rng.randint(0, grid - w)
                new = int((~mask[top : top + h, left : left + w]).sum())
                if 0 < new <= remaining:
                    mask[top : top + h, left : left + w] = True
                    count += new
                    break
        else:
            break
    return mask.flatten()


def test_block_mask_draws_as_the_per_image_loop_of_the_paper():
    """The batched masks and the paper's loop: the same distribution of counts and blockiness."""
    rng = random.Random(0)
    loop = torch.stack([beit_reference(14, 0.4, rng) for _ in range(300)])
    batched = block_mask(300, (14, 14), 0.4, gen(8))
    for stat in (lambda m: m.sum(1).float().mean() / 196, lambda m: _adjacent_pairs(m, 14),
                 lambda m: m.float().mean(0).std()):  # coverage, blockiness, evenness over positions
        assert float(stat(batched)) == pytest.approx(float(stat(loop)), rel=0.12)


def test_block_mask_takes_a_ratio_per_image():
    """iBOT draws each image's ratio (e.g. from [0.1, 0.5]); the counts follow the ratios."""
    ratios = torch.tensor([0.1, 0.5] * 64)
    counts = block_mask(128, (14, 14), ratios, gen(6)).sum(1).float()
    assert (counts <= (ratios * 196).round()).all()
    assert counts[0::2].mean() < 25 < 80 < counts[1::2].mean()
    assert (block_mask(4, (14, 14), 0.0, gen()).sum(1) == 0).all()


def _is_rectangle(mask: torch.Tensor, grid: int) -> tuple[int, int] | None:
    """(height, width) if the True cells of a [grid * grid] mask fill their bounding box, else None."""
    cells = mask.view(grid, grid).nonzero()
    if len(cells) == 0:
        return None
    h = int(cells[:, 0].max() - cells[:, 0].min()) + 1
    w = int(cells[:, 1].max() - cells[:, 1].min()) + 1
    return (h, w) if h * w == len(cells) else None


def test_multiblock_masks_follow_ijepa():
    """4 target rectangles of scale ~(0.15, 0.2) and aspect (0.75, 1.5), one size per batch; the context is a
    large block with every target patch removed."""
    grid, n = 14, 196
    masks = multiblock_masks(16, (grid, grid), gen(7))
    assert masks.context.shape == (16, n) and masks.targets.shape == (16, 4, n)
    assert not (masks.context[:, None] & masks.targets).any()  # the context never shows a target patch
    for k in range(4):
        size = _is_rectangle(masks.targets[0, k], grid)
        assert size is not None and size[0] * size[1] == int(masks.target_sizes[k])
        assert 0.15 * n * 0.85 <= size[0] * size[1] <= 0.2 * n * 1.15  # scale, up to rounding of the sides
        assert 0.75 / 1.5 <= size[0] / size[1] <= 1.5 * 1.5  # aspect, up to rounding
        for b in range(16):  # every image: the same size, its own place
            assert _is_rectangle(masks.targets[b, k], grid) == size
    assert len({tuple(masks.targets[b, 0].nonzero().flatten().tolist()) for b in range(16)}) > 4
    visible_or_target = masks.context | masks.targets.any(1)
    assert (visible_or_target.sum(1) >= 0.85 * n * 0.9).all()  # the context block held >= 85% of the image
    assert (masks.context.sum(1) > 0).all()


def test_multiblock_masks_refuse_bad_ranges():
    with pytest.raises(ConfigError, match="target_scale"):
        multiblock_masks(2, (8, 8), gen(), target_scale=(0.3, 0.2))
    with pytest.raises(ConfigError, match="num_targets"):
        multiblock_masks(2, (8, 8), gen(), num_targets=0)

