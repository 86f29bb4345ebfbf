"""Pretext methods and baselines. Importing this package registers every method."""
from selfsup.methods.registry import METHODS, create_method, method_config_class, register_method
from selfsup.methods import simclr  # noqa: F401  (registers)

__all__ = ["METHODS", "create_method", "method_config_class", "register_method"]
