"""MoCo v2: Momentum Contrast with an MLP head, blur augmentation and a cosine schedule.

He, Fan, Wu, Xie, Girshick, "Momentum Contrast for Unsupervised Visual Representation Learning",
CVPR 2020 (arXiv:1911.05722), Algorithm 1; Chen, Fan, Girshick, He, "Improved Baselines with
Momentum Contrastive Learning", 2020 (arXiv:2003.04297).

Algorithm, per step:
  q = normalize(head_q(f_q(x_q)))                        query encoder, trained
  k = normalize(head_k(f_k(x_k)))  under no_grad, with shuffled BN (below)
  loss = InfoNCE(q, k, queue, t)                          positives k, negatives the queue
  after the optimizer step: key encoder <- m * key + (1 - m) * query; enqueue the global batch's
  keys (gathered from every process), overwriting the oldest.

Shuffle-BN (sec. 3.3 of MoCo): BN statistics computed over the same images as the query's would
let the model find its positive through them. The key encoder therefore sees a random permutation
of the global batch (gathered from every process, permuted with a permutation broadcast from
rank 0) split into ``bn_splits`` groups with separate BN statistics; each process encodes
``bn_splits // processes`` (at least 1) groups of its share, and the keys are gathered and
un-shuffled. With 8 processes and ``bn_splits=8`` this is the paper's multi-GPU code; in one
process it is the "SplitBatchNorm" of the authors' single-GPU CIFAR demo, done by running the key
encoder once per group (no module surgery; the key encoder needs no gradients, so this costs
only smaller kernels). The query encoder keeps ordinary per-process BN.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from selfsup.config import MethodConfig, bounded
from selfsup.core.distributed import gather_no_grad, rank, world_size
from selfsup.core.errors import ConfigError
from selfsup.data.augment import AugmentSpec
from selfsup.losses.moco import infonce
from selfsup.methods.base import Method
from selfsup.methods.factory import register_method
from selfsup.models.ema import ema_update, frozen_copy, momentum_schedule
from selfsup.models.heads import ProjectionHead


@dataclass
class MoCoConfig(MethodConfig):
    name: str = "moco"
    temperature: float = bounded(0.2, gt=0)  # MoCo v2 (v1: 0.07)
    queue_size: int = bounded(4096, ge=1)  # K; 65536 on ImageNet, 4096 in the authors' CIFAR demo
    proj_hidden_dim: int = bounded(2048, ge=1)
    proj_dim: int = bounded(128, ge=1)
    # key-encoder EMA momentum at step 0 (0.999 in the paper's 800k-step runs)
    momentum_base: float = bounded(0.99, ge=0, le=1)
    # cosine increase to this at the last step (= momentum_base: constant)
    momentum_final: float = bounded(1.0, ge=0, le=1)
    symmetric: bool = False  # both views as queries, loss averaged (MoCo v2 is asymmetric)
    shuffle_bn: bool = True  # key-encoder BN over random groups of the global batch
    bn_splits: int = 8  # number of those groups over the global batch
    head_bn: bool = False  # BN after the head's hidden and output layers (MoCo v3's projector, arXiv:2104.02057; v2 has none)
    crop_scale: tuple[float, float] = bounded((0.2, 1.0), gt=0, le=1, pair=True)  # MoCo v2's augmentation
    blur: bool | None = None  # None: blur when the images are 64 px or larger (as SimCLR on CIFAR)


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int, bn: bool = False) -> nn.Sequential:
    """MoCo v2's head: fc - ReLU - fc, no BN (Chen et al. 2020b, sec. 2). [B, in_dim] -> [B, out_dim].

    ``bn``: fc - BN - ReLU - fc - BN instead, MoCo v3's projector (Chen, Xie, He 2021,
    arXiv:2104.02057; the output BN without affine parameters) and SimCLR's released head. A randomly
    initialised encoder maps all images to nearly the same direction; BN spreads the projections
    from the first step, so short runs learn faster.
    """
    if bn:
        return ProjectionHead(in_dim, hidden_dim, out_dim, last_bn=True)
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


def shared_permutation(n: int, device: torch.device) -> torch.Tensor:
    """A random permutation of ``range(n)``, the same on every process (drawn on rank 0, broadcast)."""
    perm = torch.randperm(n, device=device)
    if world_size() > 1:
        dist.broadcast(perm, src=0)
    return perm


@register_method("moco")
class MoCo(Method):
    """MoCo v2 (He et al., CVPR 2020, arXiv:1911.05722; Chen et al. 2020, arXiv:2003.04297).

    A query encoder (backbone + MLP head) and a momentum key encoder (its EMA, shuffle-BN); InfoNCE
    (:func:`~selfsup.losses.infonce`) with the key of the other view as the positive and a queue of
    earlier keys as negatives. Shapes: ``views`` two float ``[B, C, S, S]``; queries and keys ``[B, proj_dim]``.

    Buffers: ``queue`` [queue_size, proj_dim] (L2-normalised keys, random at start as in the
    paper's code) and ``queue_ptr`` (the next row to overwrite); both are checkpointed. ``encoder``
    is the query backbone, the one the paper evaluates. Scheduled value: ``ema_momentum``.
    """

    config_class = MoCoConfig
    min_batch_size = 2  # BN over a single image is degenerate
    tiny = {"proj_hidden_dim": 32, "proj_dim": 16, "queue_size": 40}  # a queue that a few steps wrap around
    paper = "He et al. 2020, arXiv:1911.05722 (MoCo); Chen et al. 2020, arXiv:2003.04297 (MoCo v2)"

    def __init__(self, cfg: MoCoConfig, backbone, image_size: int, num_classes: int = 0):
        super().__init__(cfg, backbone, image_size, num_classes)
        for key in ("queue_size", "bn_splits", "proj_dim"):
            if getattr(cfg, key) < 1:
                raise ConfigError(f"method.{key}={getattr(cfg, key)} must be >= 1")
        self.head = mlp_head(backbone.num_features, cfg.proj_hidden_dim, cfg.proj_dim, bn=cfg.head_bn)
        self.key_backbone = frozen_copy(backbone)
        self.key_head = frozen_copy(self.head)
        self.register_buffer("queue", F.normalize(torch.randn(cfg.queue_size, cfg.proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))  # next row to overwrite
        self._pending: list[torch.Tensor] = []  # keys of this step's micro-batches, enqueued in on_step_end

    @property
    def views(self) -> list[tuple[AugmentSpec, int]]:
        # MoCo v2: crop, jitter (0.4, 0.4, 0.4, 0.1) w.p. 0.8, grey w.p. 0.2, blur w.p. 0.5, flip.
        blur = self.image_size >= 64 if self.cfg.blur is None else self.cfg.blur
        spec = AugmentSpec(size=self.image_size, crop_scale=tuple(self.cfg.crop_scale), jitter_p=0.8, brightness=0.4,
                           contrast=0.4, saturation=0.4, hue=0.1, grayscale_p=0.2, blur_p=0.5 if blur else 0.0)
        return [(spec, 2)]

    @property
    def local_bn_modules(self) -> tuple[str, ...]:
        # Shuffle-BN's key encoder normalises over its own random groups; the query side (and, without
        # shuffle-BN, the key side) follows trainer.sync_bn (default: the global batch, as MoCo v3).
        return ("key_backbone", "key_head") if self.cfg.shuffle_bn else ()

    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        return {"ema_momentum": momentum_schedule(self.cfg.momentum_base, self.cfg.momentum_final, total_steps)}

    def training_step(self, views, labels, values):
        x_q, x_k = views
        t = self.cfg.temperature
        if self.cfg.symmetric:
            h = self.backbone(torch.cat(views))
            q_a, q_b = self.head(h).chunk(2)
            k_a, all_a = self.keys(x_q)
            k_b, all_b = self.keys(x_k)
            loss = 0.5 * (infonce(q_a, k_b, self.queue, t) + infonce(q_b, k_a, self.queue, t))
            new_keys, q, k, z = torch.cat([all_a, all_b]), q_a, k_b, torch.cat([q_a, q_b])
        else:
            h = self.backbone(x_q)
            q = z = self.head(h)
            k, new_keys = self.keys(x_k)
            loss = infonce(q, k, self.queue, t)
        if new_keys.shape[0] > self.queue.shape[0]:
            raise ConfigError(
                f"method.queue_size={self.queue.shape[0]} is smaller than the {new_keys.shape[0]} keys one step "
                f"enqueues (global batch{' x 2, symmetric' if self.cfg.symmetric else ''}); raise it"
            )
        self._stash(new_keys)
        with torch.no_grad():
            pos_sim = F.cosine_similarity(q.detach().float(), k.float(), dim=1).mean()
        return {"loss": loss, "pos_sim": pos_sim, "features": h.detach(), "embeddings": z.detach()}

    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Key-encoder projections, L2-normalised: (this process's [n, D], the global batch's [n * P, D]).

        ``x``: [n, C, H, W] this process's key views. With ``shuffle_bn``, BN statistics come from
        random groups of the global batch (module docstring); the outputs are in input order.
        """
        n = x.shape[0]
        if not self.cfg.shuffle_bn:
            k = self._encode_keys(x, groups=1)
            return k, gather_no_grad(k)
        x_all = gather_no_grad(x)  # [N, C, H, W], N = n * P
        perm = shared_permutation(x_all.shape[0], x.device)  # shuffled position j holds image perm[j]
        mine = perm[rank() * n : (rank() + 1) * n]
        k_mine = self._encode_keys(x_all[mine], groups=max(1, self.cfg.bn_splits // world_size()))
        shuffled = gather_no_grad(k_mine)
        k_all = torch.empty_like(shuffled)
        k_all[perm] = shuffled  # un-shuffle
        return k_all[rank() * n : (rank() + 1) * n], k_all

    def _encode_keys(self, x: torch.Tensor, groups: int) -> torch.Tensor:
        """Run the key encoder on ``groups`` consecutive chunks (separate BN statistics; >= 2 images each)."""
        chunks = x.tensor_split(max(1, min(groups, x.shape[0] // 2)))
        return torch.cat([F.normalize(self.key_head(self.key_backbone(c)), dim=1) for c in chunks])

    def _stash(self, keys: torch.Tensor) -> None:
        """Hold keys until ``on_step_end``; only the newest ``queue_size`` rows could survive anyway."""
        self._pending.append(keys.detach())
        while sum(p.shape[0] for p in self._pending[1:]) >= self.queue.shape[0]:
            self._pending.pop(0)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` [M, D] into the queue at the pointer, wrapping around: the oldest rows are
        overwritten first and nothing is dropped (for M <= K). No host synchronisation."""
        size, m = self.queue.shape[0], keys.shape[0]
        skip = max(0, m - size)  # of more than K keys, only the newest K survive a sequential write
        index = (self.queue_ptr + skip + torch.arange(m - skip, device=keys.device)) % size
        self.queue.index_copy_(0, index, keys[skip:].to(self.queue.dtype))
        self.queue_ptr.copy_((self.queue_ptr + m) % size)

    @torch.no_grad()
    def on_step_end(self, values: dict[str, float]) -> None:
        momentum = values["ema_momentum"]
        ema_update(self.key_backbone, self.backbone, momentum)
        ema_update(self.key_head, self.head, momentum)
        for keys in self._pending:
            self.enqueue(keys)
        self._pending.clear()
