"""The method factory: ``create_method`` over the :data:`~selfsup.core.registry.METHODS` registry."""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from selfsup.config import MethodConfig
from selfsup.core.registry import METHODS

if TYPE_CHECKING:
    from selfsup.methods.base import Method

register_method = METHODS.register


def method_config_class(name: str) -> type[MethodConfig]:
    """The config dataclass that types the ``method`` section for method ``name``."""
    return METHODS.get(name).config_class


def create_method(
    cfg: MethodConfig | str, backbone: nn.Module, *, image_size: int, num_classes: int = 0, **overrides
) -> "Method":
    """Build a registered method around ``backbone``.

    ``cfg`` is a method config, or a method name whose config defaults are used with
    ``overrides`` (``create_method("simclr", backbone, image_size=32, temperature=0.2)``).
    """
    if isinstance(cfg, str):
        cls = METHODS.get(cfg)
        cfg = cls.config_class(name=cfg, **overrides)
    else:
        cls = METHODS.get(cfg.name)
    return cls(cfg, backbone, image_size, num_classes)
