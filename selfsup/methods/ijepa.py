"""I-JEPA: predict the representations of masked image blocks from a context block.

Assran, Duval, Misra, Bojanowski, Vincent, Rabbat, LeCun, Ballas, "Self-Supervised Learning from Images with a
Joint-Embedding Predictive Architecture", CVPR 2023 (arXiv:2301.08243), sec. 3 and fig. 3:

    masks = M = 4 target blocks (scale 0.15-0.2, aspect 0.75-1.5) + 1 context block (scale 0.85-1, unit aspect)
            with every target patch removed from the context
    s_y = LayerNorm(target_encoder(x))                  all patches, no gradient; target_encoder = EMA(context_encoder)
    s_x = context_encoder(x's context patches)          a ViT run on the context patches alone
    s_hat_y(i) = predictor(s_x, mask tokens at block i's positions)    a narrow ViT, one call per block
    loss = 1/M sum_i mean L2(s_hat_y(i), s_y(i))

No augmentation beyond a random resized crop (scale 0.3-1, the paper's code). The ViT's position embedding is
the fixed 2-D sin-cos one (the paper's encoder and predictor), unless ``method.fixed_pos_embed=false``.
``encoder`` is the target encoder, which the paper evaluates (average-pooled: recipes build the ViT without a
class token and with ``global_pool: avg``, as the paper's ViTs). Masks come from
:func:`~selfsup.data.masks.multiblock_masks`, seeded by (run seed, step, micro-batch) and drawn for the global
batch (:mod:`selfsup.methods.mask_draws`); contexts are cut to the global batch's smallest, as the paper's code.
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
from selfsup.data.augment import AugmentSpec
from selfsup.data.masks import multiblock_masks, process_rows, visible_indices
from selfsup.losses.ijepa import ijepa_loss
from selfsup.methods.base import Method
from selfsup.methods.factory import register_method
from selfsup.methods.mask_draws import MaskDraws
from selfsup.models.ema import ema_update, frozen_copy
from selfsup.models.vit_patches import (
    fix_sincos_pos_embed,
    forward_patches,
    has_learned_pos_embed,
    patch_grid,
    require_sincos_width,
    require_vit,
    sincos_2d,
)


@dataclass
class IJEPAConfig(MethodConfig):
    name: str = "ijepa"
    predictor_dim: int = bounded(384, ge=1)  # the paper's predictor: width 384, depth 12 (sec. 4, appendix A)
    predictor_depth: int = bounded(12, ge=1)
    predictor_heads: int = bounded(12, ge=1)
    predictor_mlp_ratio: float = bounded(4.0, gt=0)
    num_targets: int = bounded(4, ge=1)  # M
    target_scale: tuple[float, float] = bounded((0.15, 0.2), gt=0, le=1, pair=True)
    target_aspect: tuple[float, float] = bounded((0.75, 1.5), gt=0, le=100, pair=True)
    context_scale: tuple[float, float] = bounded((0.85, 1.0), gt=0, le=1, pair=True)
    momentum: float = bounded(0.996, ge=0, le=1)  # target encoder EMA, linear to 1 over training
    # the ViT's positions: fixed 2-D sin-cos; false: its learned ones; None: fixed when it has learned ones
    fixed_pos_embed: bool | None = None
    crop_scale: tuple[float, float] = bounded((0.3, 1.0), gt=0, le=1, pair=True)  # the paper's code
    hflip_p: float = bounded(0.0, ge=0, le=1)  # the paper flips nothing


class IJEPAPredictor(nn.Module):
    """I-JEPA's predictor (Assran et al. 2023, sec. 3): a narrow ViT over the context tokens (mapped to its width,
    plus fixed 2-D sin-cos positions) and one learned mask token per target patch (plus that patch's position);
    its outputs at the mask tokens, normed and mapped back to the encoder's width, are the predictions.

    ``forward(context [B, n_ctx, D_enc], context_idx [B, n_ctx], target_idx [B, n_t])`` -> ``[B, n_t, D_enc]``.
    """

    def __init__(self, enc_dim: int, dim: int, depth: int, heads: int, mlp_ratio: float, grid: tuple[int, int]):
        super().__init__()
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos", sincos_2d(dim, *grid), persistent=False)  # [N, dim], fixed
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(depth)])
        self.norm = norm(dim)
        self.proj = nn.Linear(dim, enc_dim)
        nn.init.trunc_normal_(self.mask_token, std=0.02)  # the paper's code: truncated normal, std 0.02
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, context: Tensor, context_idx: Tensor, target_idx: Tensor) -> Tensor:
        x = self.embed(context) + self.pos[context_idx].to(context.dtype)  # [B, n_ctx, dim]
        t = self.mask_token.to(x.dtype) + self.pos[target_idx].to(x.dtype)  # [B, n_t, dim]
        h = self.blocks(torch.cat([x, t], dim=1))
        return self.proj(self.norm(h[:, context.shape[1]:]))


@register_method("ijepa")
class IJEPA(Method):
    """I-JEPA, joint-embedding predictive architecture (Assran et al. 2023, CVPR, arXiv:2301.08243, sec. 3).

    A context encoder (the ViT) sees one context block's patches; an :class:`IJEPAPredictor` predicts, for each
    of M target blocks, the patch representations that the target encoder (an EMA of the context encoder, no
    gradient) gives the full image, layer-normed; the loss is :func:`~selfsup.losses.ijepa.ijepa_loss`.

    Shapes: ``views`` one float ``[B, C, S, S]``; masks: context bool ``[B, N]``, targets ``[B, M, N]``; context
    tokens ``[B, n_ctx, D]``; per block predictions and targets ``[B, n_i, D]``. ``encoder`` is the target
    encoder. Scheduled values: ``target_momentum`` (linear to 1) and ``mask_step`` (which seeds the masks).
    """

    config_class = IJEPAConfig
    min_batch_size = 1
    needs_vit = "encodes the context patches only (forward_visible)"
    tiny = {"predictor_dim": 16, "predictor_depth": 1, "predictor_heads": 2}
    paper = "Assran et al. 2023, CVPR, arXiv:2301.08243"

    def __init__(self, cfg: IJEPAConfig, backbone: nn.Module, image_size: int, num_classes: int = 0):
        super().__init__(cfg, backbone, image_size, num_classes)
        require_vit(backbone, "method.name=ijepa", drop_patches=True, image_size=image_size)
        require_sincos_width(cfg.predictor_dim, cfg.predictor_heads, "predictor")
        self.grid = patch_grid(backbone, image_size, image_size)
        if has_learned_pos_embed(backbone) if cfg.fixed_pos_embed is None else cfg.fixed_pos_embed:
            fix_sincos_pos_embed(backbone, "method.fixed_pos_embed=true")
        self.predictor = IJEPAPredictor(backbone.num_features, cfg.predictor_dim, cfg.predictor_depth,
                                        cfg.predictor_heads, cfg.predictor_mlp_ratio, self.grid)
        self.target_encoder = frozen_copy(backbone)
        self.draws = MaskDraws()

    @property
    def encoder(self) -> nn.Module:
        return self.target_encoder

    @property
    def views(self) -> list[tuple[AugmentSpec, int]]:
        spec = AugmentSpec(size=self.image_size, crop_scale=tuple(self.cfg.crop_scale), hflip_p=self.cfg.hflip_p,
                           jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)
        return [(spec, 1)]

    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        """``target_momentum``: linear from ``momentum`` to 1 (the paper); ``mask_step``: the step."""
        return {"target_momentum": np.linspace(self.cfg.momentum, 1.0, total_steps),
                "mask_step": MaskDraws.schedule(total_steps)}

    def masks(self, batch: int, step: int, micro: int, device: torch.device) -> tuple[Tensor, list[Tensor]]:
        """This process's context indices long ``[batch, n_ctx]`` and per target block indices long
        ``[batch, n_i]`` (ascending grid indices). Drawn for the global batch (seeded by run seed, step,
        micro-batch) and sliced by process; ``n_ctx`` is the global batch's smallest context (at least 1)."""
        cfg, world = self.cfg, world_size()
        drawn = multiblock_masks(world * batch, self.grid, self.draws.generator(step, micro, device),
                                 num_targets=cfg.num_targets, target_scale=tuple(cfg.target_scale),
                                 target_aspect=tuple(cfg.target_aspect), context_scale=tuple(cfg.context_scale))
        n_ctx = max(1, int(drawn.context.sum(dim=1).min()))  # one host sync; an image with none sees 1 patch
        rows = process_rows(batch, rank(), world)
        context = visible_indices(~drawn.context[rows], n_ctx)
        targets = [visible_indices(~drawn.targets[rows, k], int(n)) for k, n in enumerate(drawn.target_sizes.tolist())]
        return context, targets

    def training_step(self, views: list[Tensor], labels: Tensor, values: dict[str, float]) -> dict[str, Tensor]:
        """``views``: one float ``[B, C, S, S]``; returns the L2 loss of the predicted target blocks."""
        x = views[0]
        step = int(values["mask_step"])
        context_idx, target_idx = self.masks(x.shape[0], step, self.draws.micro_batch(step), x.device)
        with torch.no_grad():
            h = forward_patches(self.target_encoder, x)  # [B, N, D]
        d = h.shape[-1]
        targets = [h.gather(1, idx.unsqueeze(-1).expand(-1, -1, d)) for idx in target_idx]  # M x [B, n_i, D]
        latent = self.backbone.forward_visible(x, context_idx)  # [B, P + n_ctx, D]
        context = latent[:, self.backbone.num_prefix_tokens:]
        predictions = [self.predictor(context, context_idx, idx) for idx in target_idx]
        loss = ijepa_loss(predictions, targets)
        features = self.backbone.forward_head(latent, pre_logits=True)  # pooled tokens of the context
        return {"loss": loss, "context_share": torch.tensor(context_idx.shape[1] / h.shape[1]),
                "features": features.detach()}

    @torch.no_grad()
    def on_step_end(self, values: dict[str, float]) -> None:
        """The target encoder's EMA: ``target = m target + (1 - m) context_encoder``."""
        ema_update(self.target_encoder, self.backbone, values["target_momentum"])
