"""NNCLR: Nearest-Neighbor Contrastive Learning of visual Representations.

Dwibedi, Aytar, Tompson, Sermanet, Zisserman, "With a Little Help from My Friends: Nearest-Neighbor
Contrastive Learning of Visual Representations", ICCV 2021 (arXiv:2104.14548), fig. 2 and sec. 3-4:

    z1, z2 = projector(f(x1)), projector(f(x2))      two views (BYOL's augmentations)
    p1, p2 = predictor(z1), predictor(z2)
    nn1, nn2 = NN(z1, Q), NN(z2, Q)                   nearest neighbours in the support set Q (cosine)
    loss = (L(nn1, p2) + L(nn2, p1)) / 2              L: eq. 2 with its symmetric term, over the global batch
    after the step: Q <- the batch's (all processes') normalised z1 replace the oldest rows (a FIFO queue)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.config import MethodConfig, bounded
from selfsup.core.distributed import gather_no_grad
from selfsup.core.errors import ConfigError
from selfsup.data.augment import AugmentSpec
from selfsup.losses.nnclr import nearest_neighbour, nnclr_loss
from selfsup.methods.base import Method
from selfsup.methods.byol import byol_views
from selfsup.methods.factory import register_method
from selfsup.models.heads import ProjectionHead


@dataclass
class NNCLRConfig(MethodConfig):
    name: str = "nnclr"
    temperature: float = bounded(0.1, gt=0)
    proj_hidden_dim: int = bounded(2048, ge=1)
    proj_dim: int = bounded(256, ge=1)
    proj_layers: int = bounded(3, ge=1)  # the paper's projector: 3 layers, BN
    proj_last_bn: bool = True  # BN on the projector's output too (BN in both heads, sec. 4.1)
    pred_hidden_dim: int = bounded(4096, ge=1)  # the predictor: 2 layers, 4096 hidden units
    queue_length: int = bounded(8192, ge=1)  # the support set's size (98304 on ImageNet)
    crop_scale: tuple[float, float] = bounded((0.08, 1.0), gt=0, le=1, pair=True)
    blur: bool | None = None  # None: blur when the images are 64 px or larger


@register_method("nnclr")
class NNCLR(Method):
    """NNCLR (Dwibedi et al., ICCV 2021, arXiv:2104.14548): each view's projection is replaced by its nearest
    neighbour in a support set of earlier projections, the positive of the other view's prediction.

    Backbone -> projector (3 layers, BN) -> ``z``; predictor (2 layers) -> ``p``. The neighbours
    (:func:`~selfsup.losses.nearest_neighbour`, cosine) of each view's ``z`` and the other view's ``p`` enter
    :func:`~selfsup.losses.nnclr_loss` (temperature ``method.temperature``, candidates from the global batch),
    averaged over the two view orders. The support set is a FIFO queue of the first view's normalised
    projections of the global batch, so it is identical on every process.

    Shapes: ``views`` two float ``[B, C, S, S]``; features ``[2B, num_features]``; ``z``, ``p`` ``[B, proj_dim]``
    per view. Buffers: ``queue`` ``[queue_length, proj_dim]``, ``queue_ptr`` (next row to overwrite) and
    ``queue_count`` (rows filled; only those are searched, and an empty support set makes each projection its
    own neighbour); all checkpointed. ``encoder`` is the backbone.
    """

    config_class = NNCLRConfig
    min_batch_size = 2  # BN in the heads; a contrastive loss needs a negative
    tiny = {"proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 32, "queue_length": 40}
    paper = "Dwibedi et al. 2021, ICCV, arXiv:2104.14548"

    def __init__(self, cfg: NNCLRConfig, backbone, image_size: int, num_classes: int = 0):
        super().__init__(cfg, backbone, image_size, num_classes)
        self.projector = ProjectionHead(backbone.num_features, cfg.proj_hidden_dim, cfg.proj_dim,
                                        num_layers=cfg.proj_layers, last_bn=cfg.proj_last_bn)
        self.predictor = ProjectionHead(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim)
        self.register_buffer("queue", torch.zeros(cfg.queue_length, cfg.proj_dim))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_count", torch.zeros((), dtype=torch.long))
        self._pending: list[Tensor] = []  # [M, proj_dim] projections of this step, enqueued in on_step_end

    @property
    def views(self) -> list[tuple[AugmentSpec, int]]:
        return byol_views(self.image_size, blur=self.cfg.blur, crop_scale=tuple(self.cfg.crop_scale))

    def training_step(self, views: list[Tensor], labels: Tensor, values: dict[str, float]) -> dict[str, Tensor]:
        """``views``: two ``[B, C, S, S]``; returns the loss, ``nn_similarity`` (the mean cosine between the first
        view's projection and its neighbour) and, for the online monitor, features ``[2B, D]`` and ``z`` ``[2B, d]``."""
        h = self.backbone(torch.cat(views))  # one backbone call for both views
        z = self.projector(h)
        p = self.predictor(z)
        (z_a, z_b), (p_a, p_b) = z.chunk(2), p.chunk(2)
        nn_a = nearest_neighbour(z_a, self.queue, self.queue_count)
        nn_b = nearest_neighbour(z_b, self.queue, self.queue_count)
        t = self.cfg.temperature
        loss = 0.5 * (nnclr_loss(nn_a, p_b, t, gather=True) + nnclr_loss(nn_b, p_a, t, gather=True))
        z_new = F.normalize(z_a.detach().to(self.queue.dtype), dim=1)  # [B, proj_dim]
        self._stash(gather_no_grad(z_new))
        nn_sim = (z_new * nn_a.to(z_new.dtype)).sum(1).mean()
        return {"loss": loss, "nn_similarity": nn_sim, "features": h.detach(), "embeddings": z.detach()}

    def _stash(self, embeddings: Tensor) -> None:
        """Hold ``[M, proj_dim]`` projections until ``on_step_end`` (a skipped step enqueues nothing)."""
        if embeddings.shape[0] > self.queue.shape[0]:
            raise ConfigError(f"method.queue_length={self.queue.shape[0]} is smaller than the {embeddings.shape[0]} "
                              f"projections one step enqueues (the global batch); raise it")
        self._pending.append(embeddings)
        while sum(p.shape[0] for p in self._pending[1:]) >= self.queue.shape[0]:
            self._pending.pop(0)

    @torch.no_grad()
    def enqueue(self, embeddings: Tensor) -> None:
        """Write ``[M, proj_dim]`` projections (M <= queue_length) at the pointer, overwriting the oldest rows."""
        length, m = self.queue.shape[0], embeddings.shape[0]
        index = (self.queue_ptr + torch.arange(m, device=embeddings.device)) % length
        self.queue.index_copy_(0, index, embeddings.to(self.queue.dtype))
        self.queue_ptr.copy_((self.queue_ptr + m) % length)
        self.queue_count.copy_((self.queue_count + m).clamp(max=length))

    @torch.no_grad()
    def on_step_end(self, values: dict[str, float]) -> None:
        for embeddings in self._pending:
            self.enqueue(embeddings)
        self._pending.clear()
