"""DINO: self-distillation with no labels.

Caron, Touvron, Misra, Jégou, Mairal, Bojanowski, Joulin, "Emerging Properties in
Self-Supervised Vision Transformers", ICCV 2021 (arXiv:2104.14294), Algorithm 1:

    gs, gt = student, teacher            # same architecture; gt = EMA of gs, never trained
    x1, x2 = two global crops, + N local crops (multi-crop)
    s = gs(all crops);  t = gt(x1, x2)   # the teacher sees the global crops only
    loss = mean of H(t_i, s_j) over i != j, H(t, s) = -softmax((t - C)/tau_t) . log_softmax(s/tau_s)
    C = m C + (1 - m) mean(t)            # centring, m = 0.9
    gt = l gt + (1 - l) gs               # l: cosine 0.996 -> 1

The backbone runs once per crop resolution (globals together, locals together), as the
paper's multi-crop wrapper. A ViT backbone needs ``dynamic_img_size=True`` (timm) so its
positional embeddings are interpolated for the smaller local crops. ``encoder`` is the teacher's
backbone: the paper evaluates the teacher.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from selfsup.config import MethodConfig, bounded
from selfsup.core.distributed import all_reduce_mean
from selfsup.data.augment import AugmentSpec
from selfsup.losses.dino import dino_loss, teacher_entropy
from selfsup.methods.base import Method
from selfsup.methods.factory import register_method
from selfsup.methods.multi_crop import local_crop_size, require_any_input_size
from selfsup.models.ema import ema_update, frozen_copy, momentum_schedule


@dataclass
class DINOConfig(MethodConfig):
    name: str = "dino"
    out_dim: int = bounded(4096, ge=1)  # K; 65536 on ImageNet, 4096 is plenty for 10-100 classes at 32 px
    hidden_dim: int = bounded(2048, ge=1)
    bottleneck_dim: int = bounded(256, ge=1)
    use_bn_in_head: bool = False
    norm_last_layer: bool = True  # fix the weight-norm gain g to 1 (stabler; the paper's ViT-S default)
    student_temp: float = bounded(0.1, gt=0)
    teacher_temp: float = bounded(0.07, gt=0)  # reached after the warm-up
    warmup_teacher_temp: float = bounded(0.04, gt=0)
    warmup_teacher_temp_epochs: float = 30.0
    center_momentum: float = bounded(0.9, ge=0, le=1)
    momentum_teacher: float = bounded(0.996, ge=0, le=1)  # cosine to 1 over training
    freeze_last_layer_epochs: float = 1.0  # no gradient to the last head layer during these epochs
    num_local_crops: int = bounded(6, ge=0)  # 8 in the paper at 224 px (then 10 crops per image)
    # None: half the image side (96/224 in the paper)
    local_crop_size: int | None = bounded(None, ge=1, at_most_image_side=True)
    # (0.14, 1) when num_local_crops=0
    global_crop_scale: tuple[float, float] = bounded((0.4, 1.0), gt=0, le=1, pair=True)
    local_crop_scale: tuple[float, float] = bounded((0.05, 0.4), gt=0, le=1, pair=True)
    blur: bool | None = None  # None: blur only from 64 px up (a 3x3 kernel at 32 px mostly smears)
    solarize_p: float = bounded(0.2, ge=0, le=1)  # on the second global crop


class DINOHead(nn.Module):
    """DINO's projection head (Caron et al. 2021, sec. 3.1 and appendix): 3-layer MLP with GELU
    (hidden ``hidden_dim``) down to ``bottleneck_dim``, L2 normalisation, then a weight-normalised
    linear layer without bias to ``out_dim`` whose gain is fixed to 1 when ``norm_last_layer``.

    Maps ``[B, in_dim]`` -> ``[B, out_dim]``. ``last_layer.weight`` is ``[out_dim, bottleneck_dim]``.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 use_bn: bool = False, norm_last_layer: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(2):
            layers.append(nn.Linear(dim, hidden_dim))
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            dim = hidden_dim
        layers.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):  # truncated normal, std 0.02, as the official head
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        gain = self.last_layer.parametrizations.weight.original0  # g: [out_dim, 1]
        with torch.no_grad():
            gain.fill_(1.0)
        gain.requires_grad_(not norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


@register_method("dino")
class DINO(Method):
    """DINO, self-distillation with no labels (Caron et al., ICCV 2021, arXiv:2104.14294, Algorithm 1).

    A student (backbone + :class:`DINOHead`) sees 2 global and N local crops; a teacher, its EMA, sees the
    global crops. The loss (:func:`~selfsup.losses.dino_loss`) is the cross-entropy between the teacher's
    centred, sharpened softmax (``teacher_temp``, scheduled) and the student's softmax (``student_temp``)
    over every pair of distinct crops; the centre ``C`` follows the teacher's batch mean.

    Shapes: ``views`` 2 global ``[B, C, S, S]`` then N local ``[B, C, s, s]``; head outputs ``[B, out_dim]``
    per crop; buffer ``center`` ``[1, out_dim]``. ``encoder`` is the teacher's backbone (the paper evaluates it).
    """

    config_class = DINOConfig
    min_batch_size = 1  # no batch statistics in the loss; the centre averages over steps
    multi_size = "local crops; method.num_local_crops=0 lifts it"
    tiny = {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "use_bn_in_head": True, "num_local_crops": 2,
            "freeze_last_layer_epochs": 0.0}
    paper = "Caron et al. 2021, ICCV, arXiv:2104.14294"

    def __init__(self, cfg: DINOConfig, backbone: nn.Module, image_size: int, num_classes: int = 0):
        super().__init__(cfg, backbone, image_size, num_classes)
        require_any_input_size(backbone, "dino", cfg.num_local_crops, self.local_size, image_size)
        self.head = DINOHead(backbone.num_features, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim,
                             cfg.use_bn_in_head, cfg.norm_last_layer)
        self.teacher_backbone = frozen_copy(backbone)
        self.teacher_head = frozen_copy(self.head)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        self._center_sum: Tensor | None = None  # sum of batch means of teacher outputs since the last step
        self._center_count = 0

    @property
    def encoder(self) -> nn.Module:
        return self.teacher_backbone

    @property
    def local_size(self) -> int:
        return local_crop_size(self.cfg.local_crop_size, self.image_size)

    @property
    def views(self) -> list[tuple[AugmentSpec, int]]:
        """Global crop 1 (blur p=1), global crop 2 (blur p=0.1, solarize), N local crops (blur p=0.5);
        colour jitter (0.4, 0.4, 0.2, 0.1) w.p. 0.8 and grayscale w.p. 0.2 on every crop."""
        cfg = self.cfg
        blur = self.image_size >= 64 if cfg.blur is None else cfg.blur
        common = dict(jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, grayscale_p=0.2)
        scale = tuple(cfg.global_crop_scale)
        g1 = AugmentSpec(size=self.image_size, crop_scale=scale, blur_p=1.0 if blur else 0.0, **common)
        g2 = AugmentSpec(size=self.image_size, crop_scale=scale, blur_p=0.1 if blur else 0.0,
                         solarize_p=cfg.solarize_p, **common)
        views = [(g1, 1), (g2, 1)]
        if cfg.num_local_crops > 0:
            local = AugmentSpec(size=self.local_size, crop_scale=tuple(cfg.local_crop_scale),
                                blur_p=0.5 if blur else 0.0, **common)
            views.append((local, cfg.num_local_crops))
        return views

    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        """Per-step ``teacher_momentum`` (cosine to 1), ``teacher_temp`` (linear warm-up, then flat) and
        ``freeze_last_layer`` (1.0 during the first ``freeze_last_layer_epochs``, else 0.0)."""
        cfg = self.cfg
        steps = np.arange(total_steps)
        warm = min(int(round(cfg.warmup_teacher_temp_epochs * steps_per_epoch)), total_steps)
        temp = np.full(total_steps, cfg.teacher_temp, dtype=np.float64)
        temp[:warm] = np.linspace(cfg.warmup_teacher_temp, cfg.teacher_temp, warm, endpoint=False)
        frozen = steps < int(round(cfg.freeze_last_layer_epochs * steps_per_epoch))
        return {
            "teacher_momentum": momentum_schedule(cfg.momentum_teacher, 1.0, total_steps),
            "teacher_temp": temp,
            "freeze_last_layer": frozen.astype(np.float64),
        }

    def _student(self, views: list[Tensor]) -> list[Tensor]:
        """Student logits for every view: one backbone call per run of equal-sized views, one head call."""
        runs: list[list[Tensor]] = []
        for v in views:
            if runs and runs[-1][0].shape[-2:] == v.shape[-2:]:
                runs[-1].append(v)
            else:
                runs.append([v])
        features = torch.cat([self.backbone(torch.cat(run)) for run in runs])
        return list(self.head(features).chunk(len(views)))

    def training_step(self, views: list[Tensor], labels: Tensor, values: dict[str, float]) -> dict[str, Tensor]:
        """``views``: 2 global ``[B, C, S, S]`` then N local ``[B, C, s, s]``; returns loss + collapse logs."""
        with torch.no_grad():
            teacher = self.teacher_head(self.teacher_backbone(torch.cat(views[:2])))  # [2B, K]
            self._stash_center(teacher)
        teacher_logits = list(teacher.chunk(2))
        student_logits = self._student(views)
        temp = values["teacher_temp"]
        loss = dino_loss(student_logits, teacher_logits, self.center, self.cfg.student_temp, temp)
        entropy = teacher_entropy(teacher_logits, self.center, temp)
        # Every teacher crop enters the same number of pairs, so mean KL = mean cross-entropy - mean entropy.
        return {"loss": loss, "teacher_entropy": entropy, "kl": loss.detach() - entropy}

    def _stash_center(self, teacher: Tensor) -> None:
        """Keep this micro-batch's mean teacher output; the centre moves once per optimizer step."""
        batch_mean = teacher.detach().float().mean(dim=0, keepdim=True)
        self._center_sum = batch_mean if self._center_sum is None else self._center_sum + batch_mean
        self._center_count += 1

    def on_after_backward(self, values: dict[str, float]) -> None:
        """Cancel the last layer's gradients during the first epoch(s) (the paper's training stabiliser)."""
        if values.get("freeze_last_layer", 0.0) > 0.5:
            for p in self.head.last_layer.parameters():
                p.grad = None

    @torch.no_grad()
    def on_step_end(self, values: dict[str, float]) -> None:
        """Centre update ``C = m C + (1 - m) mean(t)`` over the global batch, then the teacher EMA."""
        if self._center_sum is not None:
            batch_center = all_reduce_mean(self._center_sum / self._center_count)
            self.center.mul_(self.cfg.center_momentum).add_(batch_center, alpha=1.0 - self.cfg.center_momentum)
            self._center_sum, self._center_count = None, 0
        momentum = values["teacher_momentum"]
        ema_update(self.teacher_backbone, self.backbone, momentum)
        ema_update(self.teacher_head, self.head, momentum)
