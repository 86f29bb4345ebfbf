"""Pretext methods and baselines, one file each. Importing this package registers every method."""
import importlib
import pkgutil

from selfsup.methods.factory import (
    METHODS,
    create_method,
    method_config_class,
    register_method,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "factory"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "create_method", "method_config_class", "register_method"]
