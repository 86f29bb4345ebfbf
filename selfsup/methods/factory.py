"""The method factory: ``create_method`` over the :data:`~selfsup.core.registry.METHODS` registry."""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from selfsup.config import MethodConfig, check_image_sides, method_config, validate_method
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
    ``overrides`` (``create_method("simclr", backbone, image_size=32, temperature=0.2)``). Either
    is checked as a recipe's ``method`` section is (types, bounds): a bad value or an unknown option
    raises a one-line :class:`~selfsup.core.errors.ConfigError` naming it (and the closest option).
    """
    if isinstance(cfg, str):
        cfg = method_config(cfg, overrides)
    elif overrides:
        raise TypeError("create_method takes keyword options only with a method name, not with a config object")
    cls = METHODS.get(cfg.name)
    check_image_sides(validate_method(cfg), (image_size, image_size))
    return cls(cfg, backbone, image_size, num_classes)
