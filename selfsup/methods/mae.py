"""MAE: Masked Autoencoders Are Scalable Vision Learners.

He, Chen, Xie, Li, Dollár, Girshick, CVPR 2022 (arXiv:2111.06377), sec. 3:

    mask = random 75% of the patches, per image          (uniform, no blocks, no grid)
    z = encoder(visible patches + class token)           the ViT never sees a mask token
    u = decoder([embed(z); mask tokens at the masked positions] + fixed 2-D sin-cos positions)
    loss = MSE(u, per-patch normalised pixels) on the masked patches only

The decoder (its own width, depth and heads; a linear layer to the patch's pixels at the end) is used only
for pre-training: ``encoder`` is the ViT alone, what is exported and evaluated. Augmentation is minimal
(random resized crop, scale 0.2-1, and a flip; appendix A.1). The encoder's position embedding is the fixed
2-D sin-cos one (appendix A.1), unless ``method.fixed_pos_embed=false`` (or the ViT has none: rotary only).

Masks come from :func:`~selfsup.data.masks.random_mask` with a generator seeded by (run seed, step,
micro-batch), drawn for the global batch and sliced per process (:mod:`selfsup.data.masks`): the step
arrives as the scheduled value ``mask_step``, the run seed as a draw from the global RNG when the method is
built (which ``selfsup train`` seeds with ``trainer.seed``).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from selfsup.config import MethodConfig, bounded
from selfsup.core.distributed import rank, world_size
from selfsup.core.errors import ConfigError
from selfsup.data.augment import AugmentSpec
from selfsup.data.masks import mask_seed, process_rows, random_mask, visible_indices
from selfsup.losses.mae import mae_loss, patchify
from selfsup.methods.base import Method
from selfsup.methods.factory import register_method
from selfsup.models.vit_patches import (
    fix_sincos_pos_embed,
    has_learned_pos_embed,
    patch_grid,
    patch_size,
    require_sincos_width,
    require_vit,
    sincos_2d,
)


@dataclass
class MAEConfig(MethodConfig):
    name: str = "mae"
    mask_ratio: float = bounded(0.75, gt=0, lt=1)  # fraction of patches hidden from the encoder (table 1: 75%)
    decoder_dim: int = bounded(512, ge=1)  # the paper's default decoder: 8 blocks, width 512 (table 1a, 1b)
    decoder_depth: int = bounded(8, ge=1)
    decoder_heads: int = bounded(16, ge=1)
    decoder_mlp_ratio: float = bounded(4.0, gt=0)
    norm_pix_loss: bool = True  # targets: each patch's pixels normalised by its mean and std (table 1c)
    # the encoder's positions: fixed 2-D sin-cos (appendix A.1); false: the ViT's learned ones; None: fixed when the
    # ViT has a learned absolute position embedding (rotary-only ViTs have none)
    fixed_pos_embed: bool | None = None
    crop_scale: tuple[float, float] = bounded((0.2, 1.0), gt=0, le=1, pair=True)  # random resized crop (appendix A.1)
    hflip_p: float = bounded(0.5, ge=0, le=1)  # 0 for data that are not mirror-symmetric (digits)


class MAEDecoder(nn.Module):
    """MAE's decoder (He et al. 2022, sec. 3): a linear map from the encoder's width, a learned mask token at
    every masked position, fixed 2-D sin-cos positions, ``depth`` Transformer blocks, a norm and a linear
    prediction of each patch's ``patch_dim`` pixel values.

    ``forward(latent [B, P + n_keep, D_enc], keep [B, n_keep])`` -> ``[B, N, patch_dim]`` for all N patches
    (the ``P`` prefix tokens pass through the blocks and are dropped at the end).
    """

    def __init__(self, enc_dim: int, dim: int, depth: int, heads: int, mlp_ratio: float, grid: tuple[int, int],
                 prefix: int, patch_dim: int):
        super().__init__()
        self.prefix, self.num_patches = prefix, grid[0] * grid[1]
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        pos = torch.cat([torch.zeros(prefix, dim), sincos_2d(dim, *grid)])  # prefix tokens: position 0
        self.register_buffer("pos", pos.unsqueeze(0), persistent=False)  # [1, P + N, dim], fixed
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(depth)])
        self.norm = norm(dim)
        self.pred = nn.Linear(dim, patch_dim)
        nn.init.normal_(self.mask_token, std=0.02)  # the paper's code: xavier linears, N(0, 0.02) mask token
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, latent: Tensor, keep: Tensor) -> Tensor:
        x = self.embed(latent)  # [B, P + n_keep, dim]
        b, _, dim = x.shape
        slots = self.mask_token.to(x.dtype).expand(b, self.num_patches, dim)
        patches = slots.scatter(1, keep.unsqueeze(-1).expand(b, keep.shape[1], dim), x[:, self.prefix:])
        x = torch.cat([x[:, : self.prefix], patches], dim=1) + self.pos.to(x.dtype)
        return self.pred(self.norm(self.blocks(x)))[:, self.prefix:]


@register_method("mae")
class MAE(Method):
    """MAE, masked autoencoder (He et al. 2022, CVPR, arXiv:2111.06377, sec. 3).

    A ViT encoder sees a random ``1 - mask_ratio`` of each image's patches (plus its class token); a light
    :class:`MAEDecoder` fills the rest with mask tokens and reconstructs every patch's pixels; the loss
    (:func:`~selfsup.losses.mae_loss`) is the mean squared error on the masked patches, against per-patch
    normalised pixels with ``norm_pix_loss``.

    Shapes: ``views`` one float ``[B, C, S, S]``; mask bool ``[B, N]`` (N = (S / p)^2); encoder tokens
    ``[B, 1 + n_keep, D]``; predictions and targets ``[B, N, p * p * C]``. ``encoder`` is the ViT without the
    decoder. Scheduled value: ``mask_step`` (the step, which seeds the masks).
    """

    config_class = MAEConfig
    min_batch_size = 1
    # Why the method needs a ViT's patch tokens (a one-line error names any other backbone); tests that run
    # every registered method give such a method a tiny ViT.
    needs_vit = "encodes the visible patches only (forward_visible)"
    tiny = {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}
    paper = "He et al. 2022, CVPR, arXiv:2111.06377"

    def __init__(self, cfg: MAEConfig, backbone: nn.Module, image_size: int, num_classes: int = 0):
        super().__init__(cfg, backbone, image_size, num_classes)
        require_vit(backbone, "method.name=mae", drop_patches=True, pixel_patches=True, image_size=image_size)
        require_sincos_width(cfg.decoder_dim, cfg.decoder_heads, "decoder")
        self.patch = patch_size(backbone)
        self.grid = patch_grid(backbone, image_size, image_size)
        self.num_patches = self.grid[0] * self.grid[1]
        self.num_visible = int(self.num_patches * (1 - cfg.mask_ratio))
        if self.num_visible < 1:
            raise ConfigError(f"method.mask_ratio={cfg.mask_ratio} leaves no visible patch of {self.num_patches}")
        if has_learned_pos_embed(backbone) if cfg.fixed_pos_embed is None else cfg.fixed_pos_embed:
            fix_sincos_pos_embed(backbone, "method.fixed_pos_embed=true")
        channels = backbone.patch_embed.proj.in_channels
        self.decoder = MAEDecoder(backbone.num_features, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads,
                                  cfg.decoder_mlp_ratio, self.grid, backbone.num_prefix_tokens,
                                  self.patch[0] * self.patch[1] * channels)
        self.seed = int(torch.randint(0, 2**62, (1,)).item())  # the run seed's share of the masks (see the module)
        self._step, self._micro = -1, 0

    @property
    def views(self) -> list[tuple[AugmentSpec, int]]:
        spec = AugmentSpec(size=self.image_size, crop_scale=tuple(self.cfg.crop_scale), hflip_p=self.cfg.hflip_p,
                           jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)
        return [(spec, 1)]

    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        """``mask_step``: the step itself, which (with the run seed and the micro-batch) seeds the masks."""
        return {"mask_step": np.arange(total_steps, dtype=np.float64)}

    def masks(self, batch: int, step: int, micro: int, device: torch.device) -> Tensor:
        """This process's masks for ``batch`` images of micro-batch ``micro`` at ``step``: bool ``[batch, N]``,
        True = masked. Drawn for the global batch from a generator seeded by (run seed, step, micro-batch)
        and sliced by process: P processes mask exactly as one process on the global batch, each its own images."""
        generator = torch.Generator(device=device).manual_seed(mask_seed(self.seed, step, micro))
        world = world_size()
        drawn = random_mask(world * batch, self.num_patches, self.cfg.mask_ratio, generator)
        return drawn[process_rows(batch, rank(), world)]

    def _micro_batch(self, step: int) -> int:
        """Which micro-batch of ``step`` this call is (0 at the step's first call; gradient accumulation adds)."""
        if step != self._step:
            self._step, self._micro = step, 0
        self._micro += 1
        return self._micro - 1

    def training_step(self, views: list[Tensor], labels: Tensor, values: dict[str, float]) -> dict[str, Tensor]:
        """``views``: one float ``[B, C, S, S]``; returns the masked-patch reconstruction loss."""
        x = views[0]
        step = int(values["mask_step"])
        mask = self.masks(x.shape[0], step, self._micro_batch(step), x.device)  # [B, N]
        keep = visible_indices(mask, self.num_visible)  # [B, n_keep]
        latent = self.backbone.forward_visible(x, keep)  # [B, P + n_keep, D]
        pred = self.decoder(latent, keep)  # [B, N, p * p * C]
        loss = mae_loss(pred, patchify(x, self.patch), mask, self.cfg.norm_pix_loss)
        features = self.backbone.forward_head(latent, pre_logits=True)  # pooled tokens of the visible patches
        return {"loss": loss, "features": features.detach()}
