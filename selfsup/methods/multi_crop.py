"""Multi-crop (Caron et al. 2020, arXiv:2006.09882, sec. 3.2): 2 global crops at the training size and N small
local crops, as SwAV introduced and DINO / iBOT use. What the methods share about the local crops' size."""
from __future__ import annotations

from torch import nn

from selfsup.core.errors import ConfigError

__all__ = ["local_crop_size", "require_any_input_size"]


def local_crop_size(configured: int | None, image_size: int) -> int:
    """``method.local_crop_size``, or half the training size (the papers' 96 / 224 rounded to 1 / 2)."""
    return configured or max(1, image_size // 2)


def require_any_input_size(backbone: nn.Module, method: str, num_local: int, local_size: int, image_size: int) -> None:
    """One-line :class:`ConfigError` when local crops of another size meet a backbone built for one input size
    (a timm ViT without ``dynamic_img_size``)."""
    fixed_size = getattr(backbone, "dynamic_img_size", None) is False
    if num_local > 0 and local_size != image_size and fixed_size:
        raise ConfigError(
            f"{method}: local crops of {local_size} px need a backbone that takes any input size; this ViT was "
            f"built for {image_size} px (set backbone.model_args.dynamic_img_size=true, or method.num_local_crops=0)")
