"""Context-free network: solving jigsaw puzzles.

Noroozi & Favaro, "Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles",
ECCV 2016 (arXiv:1603.09246). A crop is cut into a 3x3 grid of cells; from each cell a tile
smaller than the cell is taken at a random position (the gaps and the jitter deny the network
edge-continuity shortcuts) and standardised by its own mean and std (no low-level-statistics
shortcut). The tiles are shuffled by one permutation of a fixed set of maximal average Hamming
distance (:mod:`selfsup.methods.jigsaw_permutations`); a shared-weight encoder (the backbone, run
once on all 9B tiles) embeds each tile, the 9 embeddings are concatenated in the shuffled order,
and an MLP classifies which permutation of the set was applied (cross-entropy).

Tile convention: tile ``i`` (0..8) of a crop comes from the cell in row ``i // 3``, column
``i % 3``. A puzzle made with permutation ``p`` holds tile ``p[i]`` at position ``i``, so the
tiles go back to their cells under the inverse permutation ``argsort(p)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.config import MethodConfig, bounded
from selfsup.core.distributed import rank, world_size
from selfsup.core.errors import ConfigError
from selfsup.data.augment import AugmentSpec
from selfsup.methods.base import Method
from selfsup.methods.factory import register_method
from selfsup.methods.jigsaw_permutations import NUM_TILES, permutation_set
from selfsup.models.heads import ProjectionHead

__all__ = ["GRID", "JigsawConfig", "Jigsaw", "sample_tile_offsets", "extract_tiles", "normalize_tiles", "shuffle_tiles"]

GRID = 3  # 3x3 puzzle
_PAPER_TILE_RATIO = 64 / 75  # the paper's 64-px tiles inside 75-px cells of a 225-px crop


def sample_tile_offsets(
    batch: int, cell: int, tile: int, jitter: bool = True, *, device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Position of each tile inside its cell: int64 ``[B, 9, 2]`` as (dy, dx) in ``[0, cell - tile]``.

    ``jitter``: uniform per tile and sample (the paper's random tile position); otherwise centred.
    """
    if not 1 <= tile <= cell:
        raise ValueError(f"tile side {tile} must lie in [1, cell side {cell}]")
    if jitter:
        return torch.randint(0, cell - tile + 1, (batch, NUM_TILES, 2), device=device, generator=generator)
    return torch.full((batch, NUM_TILES, 2), (cell - tile) // 2, dtype=torch.int64, device=device)


def extract_tiles(crops: Tensor, tile: int, offsets: Tensor | None = None) -> Tensor:
    """Cut every crop into its 3x3 tiles with one batched gather (no per-sample loop).

    Args:
        crops: ``[B, C, S, S]``; the cells are ``cell = S // 3`` px (a remainder row/column at the
            bottom/right is unused).
        tile: tile side in px, ``<= cell``.
        offsets: int ``[B, 9, 2]`` (dy, dx) of each tile in its cell (:func:`sample_tile_offsets`);
            ``None`` centres the tiles.
    Returns:
        ``[B, 9, C, tile, tile]``; tile ``i`` from the cell in row ``i // 3``, column ``i % 3``.
    """
    b, c, height, width = crops.shape
    cell = min(height, width) // GRID
    if offsets is None:
        offsets = sample_tile_offsets(b, cell, tile, jitter=False, device=crops.device)
    elif not 1 <= tile <= cell:
        raise ValueError(f"tile side {tile} must lie in [1, cell side {cell}]")
    index = torch.arange(NUM_TILES, device=crops.device)
    steps = torch.arange(tile, device=crops.device)
    offsets = offsets.to(crops.device)
    rows = ((index // GRID) * cell)[None, :, None] + offsets[..., 0:1] + steps  # [B, 9, t]
    cols = ((index % GRID) * cell)[None, :, None] + offsets[..., 1:2] + steps  # [B, 9, t]
    batch = torch.arange(b, device=crops.device)[:, None, None, None]
    tiles = crops.permute(0, 2, 3, 1)[batch, rows[..., :, None], cols[..., None, :]]  # [B, 9, t, t, C]
    return tiles.permute(0, 1, 4, 2, 3).contiguous()


def normalize_tiles(tiles: Tensor, eps: float = 1e-6) -> Tensor:
    """Standardise every tile by its own mean and (population) std over channels and pixels.

    ``tiles``: ``[..., C, t, t]`` -> same shape, each tile with mean 0 and std
    ``sqrt(var / (var + eps))`` (1 up to ``eps``; a flat tile becomes all zeros).
    """
    dims = (-3, -2, -1)
    var, mean = torch.var_mean(tiles, dim=dims, correction=0, keepdim=True)
    return (tiles - mean) * torch.rsqrt(var + eps)


def shuffle_tiles(tiles: Tensor, perms: Tensor) -> Tensor:
    """Puzzle ``b`` holds tile ``perms[b, i]`` at position ``i``.

    ``tiles``: ``[B, 9, ...]``; ``perms``: int64 ``[B, 9]`` (rows are permutations of 0..8).
    Returns ``[B, 9, ...]``. ``shuffle_tiles(puzzles, perms.argsort(1))`` undoes it.
    """
    return tiles[torch.arange(tiles.shape[0], device=tiles.device)[:, None], perms]


@dataclass
class JigsawConfig(MethodConfig):
    name: str = "jigsaw"
    num_permutations: int = bounded(100, ge=2)  # classes of the pretext task (the paper's best: 1000 on ImageNet)
    perm_min_distance: int = 5  # Hamming floor of the set (2: Algorithm 1 as published)
    perm_seed: int = 0  # picks the set's first permutation (the set is cached per seed)
    crop_size: int | None = bounded(None, ge=1)  # puzzle side in px; None: the image side; larger upsamples the crop
    tile_size: int | None = bounded(None, ge=1)  # None: round(cell * 64 / 75), the paper's tile / cell ratio
    jitter: bool = True  # random tile position inside its cell; false: centred
    # random resized crop of the image to the puzzle
    crop_scale: tuple[float, float] = bounded((0.6, 1.0), gt=0, le=1, pair=True)
    hflip_p: float = bounded(0.5, ge=0, le=1)
    # greyscale crops against chromatic-aberration cues (the share is ours)
    grayscale_p: float = bounded(0.3, ge=0, le=1)
    head_hidden_dim: int = bounded(1024, ge=1)  # the MLP over the 9 concatenated tile features (the paper's fc7)


@register_method("jigsaw")
class Jigsaw(Method):
    """Jigsaw puzzles, the context-free network (Noroozi & Favaro, ECCV 2016, arXiv:1603.09246).

    Each crop is cut into 3x3 jittered, standardised tiles, shuffled by one of ``num_permutations``
    permutations of maximal Hamming distance; the backbone embeds the 9 tiles (shared weights) and an MLP
    over their concatenation classifies the permutation (cross-entropy).

    Shapes: ``views`` one float ``[B, C, S, S]``; puzzles ``[B, 9, C, t, t]``; tile features
    ``[9B, num_features]``; logits ``[B, num_permutations]``; buffer ``permutations`` ``[num_permutations, 9]``.
    ``encoder`` is the backbone.
    """

    config_class = JigsawConfig
    min_batch_size = 2  # the classifier MLP has BatchNorm over the puzzles of the batch
    multi_size = "3x3 tiles"
    tiny = {"num_permutations": 10, "head_hidden_dim": 32}
    paper = "Noroozi & Favaro, ECCV 2016, arXiv:1603.09246"
    sync_bn_default = False  # a per-sample loss: per-process BN statistics, as in the paper's multi-GPU training

    def __init__(self, cfg: JigsawConfig, backbone: nn.Module, image_size: int, num_classes: int = 0):
        super().__init__(cfg, backbone, image_size, num_classes)
        self.crop_size = cfg.crop_size or image_size
        self.cell = self.crop_size // GRID
        self.tile = cfg.tile_size or max(1, round(self.cell * _PAPER_TILE_RATIO))
        if not 1 <= self.tile <= self.cell:
            raise ConfigError(
                f"method.tile_size={cfg.tile_size}: a {self.crop_size}-px puzzle has {self.cell}-px cells; "
                f"the tile side must lie in [1, {self.cell}] (raise method.crop_size to upsample)"
            )
        perms = permutation_set(cfg.num_permutations, cfg.perm_seed, cfg.perm_min_distance)
        self.register_buffer("permutations", torch.from_numpy(perms))  # [N, 9], checkpointed
        self.classifier = ProjectionHead(NUM_TILES * backbone.num_features, cfg.head_hidden_dim, cfg.num_permutations)

    @property
    def views(self) -> list[tuple[AugmentSpec, int]]:
        spec = AugmentSpec(
            size=self.crop_size, crop_scale=tuple(self.cfg.crop_scale), hflip_p=self.cfg.hflip_p,
            jitter_p=0.0, grayscale_p=self.cfg.grayscale_p, blur_p=0.0, solarize_p=0.0,
        )
        return [(spec, 1)]

    def make_puzzles(self, crops: Tensor) -> tuple[Tensor, Tensor]:
        """Crops ``[B, C, S, S]`` -> (puzzles ``[B, 9, C, t, t]``, permutation indices int64 ``[B]``).

        Tile positions and permutations come from the global torch RNG on the crops' device, which
        the run checkpoints (a resumed run draws the same puzzles) and seeds alike on every rank.
        So each rank draws for the whole global batch and keeps its own slice: ranks get distinct
        puzzles, and 2 processes on a split batch draw what 1 process draws on the global batch.
        """
        b, world, me = crops.shape[0], world_size(), rank()
        mine = slice(me * b, (me + 1) * b)
        offsets = sample_tile_offsets(world * b, self.cell, self.tile, self.cfg.jitter, device=crops.device)[mine]
        tiles = normalize_tiles(extract_tiles(crops, self.tile, offsets))
        target = torch.randint(0, self.cfg.num_permutations, (world * b,), device=crops.device)[mine]
        return shuffle_tiles(tiles, self.permutations[target]), target

    def training_step(self, views: list[Tensor], labels: Tensor, values: dict[str, float]) -> dict[str, Tensor]:
        """``views``: one float ``[B, C, S, S]`` crop per image; cross-entropy over the permutation index.

        Logs ``jigsaw_acc``: the fraction of puzzles whose permutation was predicted.
        """
        puzzles, target = self.make_puzzles(views[0])
        b = puzzles.shape[0]
        features = self.backbone(puzzles.flatten(0, 1))  # [9B, F]: one shared-weight call for all tiles
        logits = self.classifier(features.reshape(b, -1))  # [B, 9F] in the shuffled order -> [B, N]
        loss = F.cross_entropy(logits, target)
        acc = (logits.detach().argmax(dim=1) == target).float().mean()
        return {"loss": loss, "jigsaw_acc": acc}
