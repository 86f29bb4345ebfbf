"""Patch tokens of timm Vision Transformers: the API masked-image and dense methods read.

Every ViT that :func:`~selfsup.models.backbones.create_backbone` builds (so every exported ViT that
``selfsup.load_encoder`` rebuilds) gains two methods besides timm's ``forward``:

- ``forward_patches(x) -> [B, N, D]``: the patch tokens after the final norm, class and register tokens
  dropped (``N = (H / p) * (W / p)``, row-major over the patch grid), for dense transfer and ``eval.pool=mean``;
- ``forward_visible(x, keep) -> [B, P + n_keep, D]``: the ViT run on the patches ``keep`` [B, n_keep]
  alone (indices into the grid, position embeddings added before the others are dropped), its ``P``
  prefix (class / register) tokens first. MAE's encoder (He et al. 2022, arXiv:2111.06377, sec. 3) and
  I-JEPA's context encoder (Assran et al. 2023, arXiv:2301.08243) see only these.

They are plain functions bound to the instance (the module's class and state dict stay timm's, so
``timm.create_model("local-dir:...")`` still loads an export). ``forward_patches`` works for every timm ViT
with ``forward_features`` and ``num_prefix_tokens`` (``vit_*``, ``deit*``, ``eva*``, relative-position
ViTs); ``forward_visible`` for those whose positions are absolute or rotary (timm's ``VisionTransformer``
with its hybrid variants, and ``Eva``): a relative-position bias is defined for the full grid only.

Also here: the fixed 2-D sine-cosine position embedding MAE and MoCo v3 use (:func:`sincos_2d`,
:func:`fix_sincos_pos_embed`) and MoCo v3's frozen random patch projection (:func:`freeze_patch_embed`).
"""
from __future__ import annotations

import types

import torch
from torch import Tensor, nn

from selfsup.core.errors import ConfigError

__all__ = ["has_patch_tokens", "can_drop_patches", "add_patch_api", "require_vit", "require_sincos_width",
           "forward_patches", "forward_visible", "patch_size", "patch_grid", "sincos_2d", "has_learned_pos_embed",
           "fix_sincos_pos_embed", "freeze_patch_embed"]


def has_patch_tokens(model: nn.Module) -> bool:
    """Whether ``model`` is a timm ViT whose ``forward_features`` returns prefix + patch tokens."""
    return all(hasattr(model, a) for a in ("patch_embed", "num_prefix_tokens", "forward_features", "blocks"))


def can_drop_patches(model: nn.Module) -> bool:
    """Whether ``forward_visible`` can run ``model`` (absolute or rotary positions, see the module docstring)."""
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, (VisionTransformer, Eva))


def add_patch_api(model: nn.Module) -> nn.Module:
    """Bind ``forward_patches`` (and ``forward_visible`` where it applies) to a timm ViT; other models are
    returned untouched. Modifies and returns ``model``."""
    if has_patch_tokens(model):
        model.forward_patches = types.MethodType(forward_patches, model)
        if can_drop_patches(model):
            model.forward_visible = types.MethodType(forward_visible, model)
    return model


def require_vit(model: nn.Module, what: str, *, drop_patches: bool = False, pixel_patches: bool = False,
                image_size: int | None = None) -> None:
    """One-line :class:`ConfigError` naming ``what`` unless ``model`` is a timm ViT (with ``forward_visible``
    when ``drop_patches``; with pixel patches, not a hybrid's CNN stem, when ``pixel_patches``; built for
    ``image_size`` x ``image_size`` inputs, or with ``dynamic_img_size``, when ``image_size`` is given)."""
    from timm.layers import PatchEmbed

    name = (getattr(model, "selfsup_spec", None) or {}).get("name", type(model).__name__)
    if not has_patch_tokens(model) or (drop_patches and not can_drop_patches(model)):
        kind = "whose patches can be dropped (timm's VisionTransformer or Eva: vit_*, deit*, eva*)" if drop_patches \
            else "(a timm ViT: vit_*, deit*, eva*)"
        raise ConfigError(f"{what} needs a ViT backbone {kind}, not {name}")
    if pixel_patches and not isinstance(model.patch_embed, PatchEmbed):
        raise ConfigError(f"{what} needs a ViT whose tokens are pixel patches, not {name} (a hybrid: CNN stem)")
    built = tuple(model.patch_embed.img_size)
    if image_size is not None and not getattr(model, "dynamic_img_size", False) and built != (image_size, image_size):
        raise ConfigError(f"this ViT was built for {built[0]}x{built[1]} images, the views are {image_size} px: "
                          f"set backbone.model_args.img_size={image_size}")


def require_sincos_width(dim: int, heads: int, what: str) -> None:
    """One-line :class:`ConfigError` unless a block of width ``dim`` (config key ``method.<what>_dim``) splits
    into ``heads`` heads and takes 2-D sin-cos positions (:func:`sincos_2d`: a multiple of 4)."""
    if dim % heads or dim % 4:
        raise ConfigError(f"method.{what}_dim={dim} must be a multiple of method.{what}_heads={heads} "
                          "and of 4 (2-D sin-cos positions)")


def patch_size(model: nn.Module) -> tuple[int, int]:
    """The ViT's patch side ``(p_h, p_w)`` in pixels."""
    size = model.patch_embed.patch_size
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def patch_grid(model: nn.Module, height: int, width: int) -> tuple[int, int]:
    """The patch grid ``(H / p_h, W / p_w)`` of an ``height x width`` input; one-line error if it does not tile."""
    ph, pw = patch_size(model)
    if height % ph or width % pw:
        raise ConfigError(f"{height}x{width} images do not split into {ph}x{pw} patches; "
                          "choose backbone.model_args.patch_size dividing the image side")
    return height // ph, width // pw


def forward_patches(model: nn.Module, x: Tensor) -> Tensor:
    """Patch tokens after the final norm: float ``[B, C, H, W]`` -> ``[B, N, D]`` (no class / register tokens)."""
    return model.forward_features(x)[:, model.num_prefix_tokens:]


def forward_visible(model: nn.Module, x: Tensor, keep: Tensor) -> Tensor:
    """The ViT on the visible patches only: ``[B, C, H, W]``, ``keep`` long ``[B, n_keep]`` (grid indices)
    -> ``[B, P + n_keep, D]`` after the final norm, the ``P`` prefix tokens first, then the kept patches in
    ``keep``'s order. Position embeddings are added first, so each kept token keeps its position; with
    every index kept in order this is ``forward_features(x)`` (up to ``patch_drop``, which is skipped)."""
    from timm.models.eva import Eva

    tokens = model.patch_embed(x)
    rope = None
    if isinstance(model, Eva):
        if getattr(model, "patch_drop", None) is not None:
            raise ConfigError("forward_visible: set backbone.model_args.patch_drop_rate=0 (patches are dropped by the mask)")
        tokens, rope = model._pos_embed(tokens)
    else:
        tokens = model._pos_embed(tokens)
    prefix = model.num_prefix_tokens
    b, _, d = tokens.shape
    patches = tokens[:, prefix:].gather(1, keep.unsqueeze(-1).expand(b, keep.shape[1], d))
    tokens = model.norm_pre(torch.cat([tokens[:, :prefix], patches], dim=1))
    if rope is None:
        tokens = model.blocks(tokens)
    else:
        tokens = _eva_blocks(model, tokens, rope, keep)
    return model.norm(tokens)


def _eva_blocks(model: nn.Module, tokens: Tensor, rope: Tensor, keep: Tensor) -> Tensor:
    """Eva's blocks with the rotary embedding [N, dim] (or [depth, heads, N, dim], mixed mode) of the kept patches."""
    if getattr(model, "rope_mixed", False):  # [depth, heads, N, dim] -> per block [B, heads, n_keep, dim]
        picked = rope[:, :, keep].permute(0, 2, 1, 3, 4)
        for i, blk in enumerate(model.blocks):
            tokens = blk(tokens, rope=picked[i])
        return tokens
    picked = rope[keep].unsqueeze(1)  # [B, 1, n_keep, dim]: broadcast over heads
    for blk in model.blocks:
        tokens = blk(tokens, rope=picked)
    return tokens


# ----------------------------------------------------------------------------- fixed position embedding

def sincos_2d(dim: int, grid_h: int, grid_w: int, temperature: float = 10000.0) -> Tensor:
    """The fixed 2-D sine-cosine position embedding of MAE / MoCo v3: float32 ``[grid_h * grid_w, dim]``.

    Row ``i * grid_w + j`` (patch at row ``i``, column ``j``): the first ``dim / 2`` values encode ``j``, the
    last ``dim / 2`` encode ``i``, each as ``[sin(pos w_k), cos(pos w_k)]`` with ``w_k = T^(-k / (dim / 4))``,
    ``k = 0 .. dim / 4 - 1`` (the 1-D transformer embedding of Vaswani et al. 2017 per axis). ``dim`` must be a
    multiple of 4.
    """
    if dim % 4:
        raise ConfigError(f"a 2-D sin-cos position embedding needs a width divisible by 4, got {dim}")
    omega = temperature ** (-torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # [dim / 4]
    rows, cols = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64),
                                indexing="ij")

    def axis(pos: Tensor) -> Tensor:
        angles = pos.reshape(-1, 1) * omega  # [N, dim / 4]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([axis(cols), axis(rows)], dim=1).float()


def has_learned_pos_embed(model: nn.Module) -> bool:
    """Whether a ViT adds a learned absolute position embedding (``pos_embed``; rotary-only ViTs have none)."""
    return isinstance(getattr(model, "pos_embed", None), nn.Parameter)


def fix_sincos_pos_embed(model: nn.Module, what: str = "") -> None:
    """Set a ViT's learned position embedding to :func:`sincos_2d` of its patch grid (zeros for class /
    register tokens that carry a position) and stop its gradient, as MAE (He et al. 2022, appendix A.1)
    and MoCo v3 (Chen et al. 2021, sec. 5) do. One-line error, starting with ``what``, for a model without one."""
    pos = getattr(model, "pos_embed", None)
    if not has_learned_pos_embed(model):
        raise ConfigError(f"{what + ': ' if what else ''}{type(model).__name__} has no learned position embedding "
                          "to fix (pos_embed; rotary positions only?)")
    grid_h, grid_w = model.patch_embed.grid_size
    prefix = pos.shape[1] - grid_h * grid_w  # 0 with no_embed_class, else the prefix tokens
    with torch.no_grad():
        pos.zero_()
        pos[0, prefix:] = sincos_2d(pos.shape[-1], grid_h, grid_w).to(pos.dtype)
    pos.requires_grad_(False)


def freeze_patch_embed(model: nn.Module) -> None:
    """Stop the gradient of a ViT's patch projection (MoCo v3's random patch projection, Chen et al. 2021,
    sec. 5.1): the linear map of pixels to tokens keeps its random initial weights."""
    proj = getattr(getattr(model, "patch_embed", None), "proj", None)
    if proj is None:
        raise ConfigError(f"{type(model).__name__} has no patch projection (patch_embed.proj) to freeze")
    for p in proj.parameters():
        p.requires_grad_(False)
