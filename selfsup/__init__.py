"""selfsup: self-supervised representation learning for PyTorch.

Named ``selfsup``, not ``ssl``: ``ssl`` is Python's standard TLS module and would shadow it.
"""
from selfsup import losses
from selfsup.methods import create_method
from selfsup.models.backbones import create_backbone
from selfsup.runs.export import load_encoder

__version__ = "0.1.0"
__all__ = ["create_backbone", "create_method", "load_encoder", "losses", "__version__"]
