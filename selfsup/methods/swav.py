"""SwAV: Swapping Assignments between multiple Views of the same image.

Caron, Misra, Mairal, Goyal, Bojanowski, Joulin, "Unsupervised Learning of Visual Features by
Contrasting Cluster Assignments", NeurIPS 2020 (arXiv:2006.09882), Algorithm 1 and sec. 3:

    z = normalize(projector(f(x)))  for 2 global + N local crops (multi-crop, sec. 3.2)
    scores = z @ C^T                 C: K prototypes, rows L2-normalised after every step
    q_s = sinkhorn(scores_s)         codes of the 2 global crops, over the global batch (eq. 3-4),
                                     with a queue of earlier embeddings in front when batches are small
    loss = mean over s in {1, 2}, t != s of  -q_s . log softmax(scores_t / tau)   (swapped prediction)

The prototypes get no update during the first ``freeze_prototypes_epochs`` (sec. 4 / appendix A).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.config import MethodConfig, bounded
from selfsup.core.distributed import gather_no_grad, shard_bounds
from selfsup.core.errors import ConfigError
from selfsup.data.augment import AugmentSpec
from selfsup.losses.sinkhorn import sinkhorn_knopp
from selfsup.losses.swav import swav_loss
from selfsup.methods.base import Method
from selfsup.methods.factory import register_method
from selfsup.methods.multi_crop import local_crop_size, require_any_input_size
from selfsup.models.heads import ProjectionHead


@dataclass
class SwAVConfig(MethodConfig):
    name: str = "swav"
    proj_hidden_dim: int = bounded(2048, ge=1)
    proj_dim: int = bounded(128, ge=1)
    prototypes: int = bounded(3000, ge=1)  # K, the number of prototypes (3000 in the paper)
    temperature: float = bounded(0.1, gt=0)  # tau of the prediction softmax
    epsilon: float = bounded(0.05, gt=0)  # Sinkhorn-Knopp's entropic regularisation
    sinkhorn_iterations: int = bounded(3, ge=1)
    freeze_prototypes_epochs: float = bounded(1.0, ge=0)  # no prototype update during these epochs
    # Earlier embeddings in front of the batch when computing codes (3840 for batch 256 in the paper); 0: off
    queue_length: int = bounded(0, ge=0)
    queue_start_epochs: float = bounded(15.0, ge=0)  # the queue fills from this epoch on and is used once full
    num_local_crops: int = bounded(6, ge=0)  # 6 in the paper (2 x 224 px + 6 x 96 px)
    # None: half the image side (96/224 in the paper)
    local_crop_size: int | None = bounded(None, ge=1, at_most_image_side=True)
    global_crop_scale: tuple[float, float] = bounded((0.14, 1.0), gt=0, le=1, pair=True)
    local_crop_scale: tuple[float, float] = bounded((0.05, 0.14), gt=0, le=1, pair=True)
    color_strength: float = bounded(1.0, ge=0)  # SimCLR's jitter strength s (1.0 in SwAV)
    blur: bool | None = None  # None: blur (p=0.5) when the images are 64 px or larger


def run_per_resolution(backbone: nn.Module, views: list[Tensor]) -> Tensor:
    """Backbone features of every view, ``[sum of B_v, D]`` in view order: one call per run of views of
    equal size (multi-crop's wrapper: the global crops together, the local crops together)."""
    runs: list[list[Tensor]] = []
    for v in views:
        if runs and runs[-1][0].shape[-2:] == v.shape[-2:]:
            runs[-1].append(v)
        else:
            runs.append([v])
    return torch.cat([backbone(torch.cat(run)) for run in runs])


def _reread_queue_count(module: "SwAV", incompatible_keys) -> None:
    """After ``load_state_dict``: the loaded ``queue_count`` decides again whether the queue is full."""
    module._queue_full = False


@register_method("swav")
class SwAV(Method):
    """SwAV (Caron et al., NeurIPS 2020, arXiv:2006.09882, Algorithm 1) with multi-crop and the queue.

    Backbone -> projector (fc-BN-ReLU-fc) -> L2-normalised embeddings ``z`` -> prototype scores ``z C^T``
    (``prototypes``: a linear layer without bias whose rows are L2-normalised after every step). The codes
    of the two global crops come from :func:`~selfsup.losses.sinkhorn_knopp` over the global batch (its
    sums all-reduced across processes), each predicted by every other crop (:func:`~selfsup.losses.swav_loss`).

    Shapes: ``views`` 2 global ``[B, C, S, S]`` then N local ``[B, C, s, s]``; embeddings ``[B, proj_dim]``
    and scores, codes ``[B, prototypes]`` per crop. Buffers: ``queue`` ``[2, queue_length, proj_dim]``
    (earlier global-crop embeddings of the global batch, identical on every process), ``queue_ptr`` (next
    row to overwrite) and ``queue_count`` (rows filled); all checkpointed. Scheduled values:
    ``freeze_prototypes`` and ``queue_active`` (1.0 or 0.0 per step). ``encoder`` is the backbone.
    """

    config_class = SwAVConfig
    min_batch_size = 2  # the projector's BatchNorm needs a batch
    multi_size = "local crops; method.num_local_crops=0 lifts it"
    tiny = {"proj_hidden_dim": 32, "proj_dim": 16, "prototypes": 24, "num_local_crops": 2, "queue_length": 32,
            "queue_start_epochs": 0.0, "freeze_prototypes_epochs": 0.0}
    paper = "Caron et al. 2020, NeurIPS, arXiv:2006.09882"

    def __init__(self, cfg: SwAVConfig, backbone: nn.Module, image_size: int, num_classes: int = 0):
        super().__init__(cfg, backbone, image_size, num_classes)
        require_any_input_size(backbone, "swav", cfg.num_local_crops, self.local_size, image_size)
        if cfg.prototypes <= cfg.proj_dim:  # K unit vectors in R^d, K <= d: some unit z has z . c_k equal for all k
            raise ConfigError(f"method.prototypes={cfg.prototypes} must exceed method.proj_dim={cfg.proj_dim}: with "
                              "K <= d an embedding scores every prototype alike, and the loss sits at ln K (collapse)")
        self.projector = ProjectionHead(backbone.num_features, cfg.proj_hidden_dim, cfg.proj_dim)
        self.prototypes = nn.Linear(cfg.proj_dim, cfg.prototypes, bias=False)
        self.normalize_prototypes()
        self.register_buffer("queue", torch.zeros(2, cfg.queue_length, cfg.proj_dim))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_count", torch.zeros((), dtype=torch.long))
        self._queue_full = False  # a host-side cache of queue_count == queue_length (it never drops back)
        self.register_load_state_dict_post_hook(_reread_queue_count)
        self._pending: list[Tensor] = []  # [2, M, proj_dim] embeddings of this step, enqueued in on_step_end

    @property
    def local_size(self) -> int:
        return local_crop_size(self.cfg.local_crop_size, self.image_size)

    @property
    def views(self) -> list[tuple[AugmentSpec, int]]:
        """2 global crops and N local crops, each with SimCLR's colour distortion (jitter 0.8 s, 0.8 s, 0.8 s,
        0.2 s w.p. 0.8, grey w.p. 0.2), flip and blur w.p. 0.5 (from 64 px up unless ``blur`` says)."""
        cfg = self.cfg
        views = [(AugmentSpec.simclr(self.image_size, cfg.color_strength, cfg.blur, tuple(cfg.global_crop_scale)), 2)]
        if cfg.num_local_crops > 0:
            local = AugmentSpec.simclr(self.local_size, cfg.color_strength, cfg.blur, tuple(cfg.local_crop_scale))
            views.append((local, cfg.num_local_crops))
        return views

    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        """``freeze_prototypes``: 1.0 during the first ``freeze_prototypes_epochs``; ``queue_active``: 1.0 from
        ``queue_start_epochs`` on (when ``queue_length > 0``); else 0.0."""
        steps = np.arange(total_steps)
        freeze = steps < int(round(self.cfg.freeze_prototypes_epochs * steps_per_epoch))
        start = int(round(self.cfg.queue_start_epochs * steps_per_epoch))
        active = (steps >= start) & (self.cfg.queue_length > 0)
        return {"freeze_prototypes": freeze.astype(np.float64), "queue_active": active.astype(np.float64)}

    def training_step(self, views: list[Tensor], labels: Tensor, values: dict[str, float]) -> dict[str, Tensor]:
        """``views``: 2 global ``[B, C, S, S]`` then N local ``[B, C, s, s]``; returns the loss, ``code_entropy`` (the
        codes' mean entropy in nats: ``ln K`` when they are uniform, the collapse SwAV's loss then sits at) and the
        global crops' features ``[2B, D]`` and embeddings ``[2B, proj_dim]`` (view-major) for the online monitor."""
        b = views[0].shape[0]
        h = run_per_resolution(self.backbone, views)  # [V * B, D]
        z = F.normalize(self.projector(h), dim=1)  # [V * B, proj_dim]
        scores = list(self.prototypes(z).chunk(len(views)))  # V x [B, K]
        z_global = z[: 2 * b].detach().unflatten(0, (2, b))  # [2, B, proj_dim]
        codes = [self.codes(scores[i], i) for i in range(2)]
        loss = swav_loss(scores, codes, self.cfg.temperature)
        if values.get("queue_active", 0.0) > 0.5:
            self._stash(torch.stack([gather_no_grad(z_global[i]) for i in range(2)]))
        q = torch.stack(codes)  # [2, B, K]; entropy ln K: uniform codes (collapse), 0: one prototype each
        entropy = -(q * q.clamp_min(1e-30).log()).sum(-1).mean()
        return {"loss": loss, "code_entropy": entropy, "features": h[: 2 * b].detach(), "embeddings": z[: 2 * b].detach()}

    @torch.no_grad()
    def codes(self, scores: Tensor, view: int) -> Tensor:
        """Sinkhorn codes ``[B, K]`` of global crop ``view`` over the global batch. Once the queue is full, this
        process's share of it (every process a different slice of the identical queue, so the global
        problem holds each queued row once) stands in front of the batch, as in the paper's code."""
        b = scores.shape[0]
        if self.queue.shape[1] > 0 and self.queue_full():
            lo, hi = shard_bounds(self.queue.shape[1])
            dtype = torch.promote_types(scores.dtype, torch.float32)
            queued = self.queue[view, lo:hi].to(dtype) @ self.prototypes.weight.detach().to(dtype).T  # [L / P, K]
            scores = torch.cat([queued, scores.detach().to(dtype)])
        return sinkhorn_knopp(scores, self.cfg.epsilon, self.cfg.sinkhorn_iterations, gather=True)[-b:]

    def queue_full(self) -> bool:
        """Whether every queue row holds an embedding (read from the device until it is, then cached)."""
        if not self._queue_full:
            self._queue_full = bool(self.queue_count >= self.queue.shape[1])
        return self._queue_full

    def _stash(self, embeddings: Tensor) -> None:
        """Hold ``[2, M, proj_dim]`` embeddings until ``on_step_end`` (a skipped step enqueues nothing)."""
        if embeddings.shape[1] > self.queue.shape[1]:
            raise ConfigError(f"method.queue_length={self.queue.shape[1]} is smaller than the {embeddings.shape[1]} "
                              f"embeddings one step enqueues (the global batch); raise it, or 0 turns the queue off")
        self._pending.append(embeddings)
        while sum(p.shape[1] for p in self._pending[1:]) >= self.queue.shape[1]:
            self._pending.pop(0)

    @torch.no_grad()
    def enqueue(self, embeddings: Tensor) -> None:
        """Write ``[2, M, proj_dim]`` embeddings (M <= queue_length) at the pointer, overwriting the oldest rows."""
        length, m = self.queue.shape[1], embeddings.shape[1]
        index = (self.queue_ptr + torch.arange(m, device=embeddings.device)) % length
        self.queue.index_copy_(1, index, embeddings.to(self.queue.dtype))
        self.queue_ptr.copy_((self.queue_ptr + m) % length)
        self.queue_count.copy_((self.queue_count + m).clamp(max=length))

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """``C <- C / ||C||`` row-wise: the prototypes stay on the unit sphere."""
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def on_after_backward(self, values: dict[str, float]) -> None:
        """No prototype update while frozen: their gradient is dropped (the optimizer then skips them)."""
        if values.get("freeze_prototypes", 0.0) > 0.5:
            self.prototypes.weight.grad = None

    @torch.no_grad()
    def on_step_end(self, values: dict[str, float]) -> None:
        """Prototypes back onto the unit sphere (untouched while frozen); the step's embeddings into the queue."""
        if values.get("freeze_prototypes", 0.0) <= 0.5:
            self.normalize_prototypes()
        for embeddings in self._pending:
            self.enqueue(embeddings)
        self._pending.clear()
