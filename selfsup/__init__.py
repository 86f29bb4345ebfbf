"""selfsup: self-supervised representation learning for PyTorch.

Named ``selfsup``, not ``ssl``: ``ssl`` is Python's standard TLS module and would shadow it.

The public API, by role (each name also lives in its role package; ``import selfsup`` registers
every method, dataset and sequence backbone):

- build: :func:`create_method`, :func:`create_backbone`, :class:`Method`, :class:`LrRule`,
  :func:`register_method`, :class:`ProjectionHead`, :mod:`losses` (pure loss functions)
- data: :func:`open_split`, :func:`load_dataset`, :func:`register_dataset`, :class:`AugmentSpec`,
  :class:`ViewMaker`
- run: :func:`load_config`, :class:`Config`, :func:`train`, :class:`Trainer`, :func:`build_method`
- use: :func:`load_encoder`, :func:`export_encoder`, :func:`evaluate_run`, :func:`evaluate`,
  :func:`extract_features`, :func:`knn_classify`, :func:`linear_probe`, :func:`finetune`
"""
from selfsup.core import interrupt as _interrupt
from selfsup.core.threads import passive_openmp_wait as _passive_openmp_wait

if _interrupt.is_cli():  # before the heavy imports: Ctrl-C during start-up is one line, exit 130;
    _interrupt.install()  # OpenMP threads sleep, not spin, while they wait (a shared CPU: see core/threads.py)
    _passive_openmp_wait()  # only on a busy machine: spinning is faster on an idle one

from selfsup import losses
from selfsup.config import Config, load_config
from selfsup.data import load_dataset, open_split, register_dataset
from selfsup.data.augment import AugmentSpec, ViewMaker
from selfsup.engine.build import build_method
from selfsup.engine.trainer import Trainer
from selfsup.evaluation import extract_features, knn_classify, linear_probe
from selfsup.evaluation.finetune import finetune
from selfsup.evaluation.protocols import evaluate
from selfsup.methods import create_method, register_method
from selfsup.methods.base import LrRule, Method
from selfsup.models.backbones import create_backbone
from selfsup.models.heads import ProjectionHead
from selfsup.runs.evaluate import evaluate_run
from selfsup.runs.export import export_encoder, load_encoder
from selfsup.runs.train import train

__version__ = "0.1.0"
__all__ = [
    "AugmentSpec", "Config", "LrRule", "Method", "ProjectionHead", "Trainer", "ViewMaker", "__version__",
    "build_method", "create_backbone", "create_method", "evaluate", "evaluate_run", "export_encoder",
    "extract_features", "finetune", "knn_classify", "linear_probe", "load_config", "load_dataset",
    "load_encoder", "losses", "open_split", "register_dataset", "register_method", "train",
]
