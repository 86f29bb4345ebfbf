"""iBOT: DINO's [CLS] self-distillation plus masked-patch self-distillation, with DINOv2's options.

Zhou, Wei, Wang, Shen, Xie, Yuille, Kong, "iBOT: Image BERT Pre-Training with Online Tokenizer", ICLR 2022
(arXiv:2111.07832), sec. 3 and Algorithm 1:

    u, v = two global crops (+ local crops), DINO's augmentations
    m_u, m_v = block-wise masks; u_hat, v_hat = the crops with masked patch embeddings -> a learned token
    student(u_hat, v_hat, locals) -> [CLS] and patch logits;  teacher(u, v) -> the same, unmasked
    L_[CLS] = DINO's loss between the teacher's [CLS] on one global crop and the student's on every other crop
    L_MIM   = cross-entropy of teacher and student patch distributions at the masked patches of the same crop
    loss = L_[CLS] + L_MIM;  the [CLS] and patch centres move as DINO's;  teacher = EMA of the student

Block-wise masks (BEiT, :func:`~selfsup.data.masks.block_mask`): each global crop is masked with probability
``mask_probability``, its ratio drawn uniformly from ``mask_ratio``. Heads: one DINO head for [CLS] and
patches (``shared_head``), or a second one for the patches.

DINOv2 (Oquab et al. 2023, arXiv:2304.07193, sec. 4) as options: ``centering: sinkhorn`` replaces the running
centres by Sinkhorn-Knopp on the teacher's outputs (3 iterations, epsilon = the teacher temperature; SwAV's
:func:`~selfsup.losses.sinkhorn.sinkhorn_knopp` over the global batch: both global crops' [CLS] together, the
masked patches together); ``koleo_weight`` > 0 adds the KoLeo regulariser on the student's [CLS] features of
each global crop (0.1 in DINOv2). DINO's head, centre, temperature schedules, views and last-layer freeze are
inherited from :class:`~selfsup.methods.dino.DINO`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.config import bounded
from selfsup.core.distributed import all_reduce_mean, rank, world_size
from selfsup.core.errors import ConfigError
from selfsup.data.masks import block_mask, process_rows
from selfsup.losses.dino import dino_loss, teacher_entropy
from selfsup.losses.ibot import ibot_patch_loss
from selfsup.losses.koleo import koleo_loss
from selfsup.losses.sinkhorn import sinkhorn_knopp
from selfsup.methods.dino import DINO, DINOConfig, DINOHead
from selfsup.methods.factory import register_method
from selfsup.methods.mask_draws import MaskDraws
from selfsup.models.ema import ema_update, frozen_copy
from selfsup.models.vit_patches import patch_grid, require_vit


@dataclass
class IBOTConfig(DINOConfig):
    name: str = "ibot"
    shared_head: bool = True  # one head for [CLS] and patches (iBOT's default); false: a second head (DINOv2)
    patch_out_dim: int | None = bounded(None, ge=1)  # the patch head's K; None: out_dim (must be, with a shared head)
    teacher_patch_temp: float = bounded(0.07, gt=0)  # reached after warmup_teacher_temp_epochs
    warmup_teacher_patch_temp: float = bounded(0.04, gt=0)
    center_momentum_patch: float = bounded(0.9, ge=0, le=1)
    mask_probability: float = bounded(0.5, ge=0, le=1)  # share of global crops masked (DINOv2's 0.5)
    mask_ratio: tuple[float, float] = bounded((0.1, 0.5), ge=0, lt=1, pair=True)  # per crop, uniform
    mask_aspect: tuple[float, float] = bounded((0.3, 1 / 0.3), gt=0, le=100, pair=True)  # block aspect, log-uniform
    cls_weight: float = bounded(1.0, ge=0)  # lambda_1 of L_[CLS]
    patch_weight: float = bounded(1.0, ge=0)  # lambda_2 of L_MIM
    centering: Literal["centre", "sinkhorn"] = "centre"  # running centres (iBOT) or Sinkhorn-Knopp (DINOv2)
    sinkhorn_iterations: int = bounded(3, ge=1)
    koleo_weight: float = bounded(0.0, ge=0)  # DINOv2: 0.1


def forward_masked(vit: nn.Module, x: Tensor, mask: Tensor | None, mask_token: Tensor) -> Tensor:
    """A timm ViT's tokens with the masked patch embeddings replaced by ``mask_token`` before the position
    embedding (iBOT, sec. 3.2): ``x`` ``[B, C, H, W]``, ``mask`` bool ``[B, N]`` (or None), ``mask_token``
    ``[D]`` -> ``forward_features`` ``[B, P + N, D]`` (prefix tokens first)."""
    if mask is None:
        return vit.forward_features(x)

    def replace(module: nn.Module, inputs: tuple, out: Tensor) -> Tensor:
        flat = out.reshape(out.shape[0], -1, out.shape[-1])  # NHWC (dynamic_img_size) or NLC -> [B, N, D]
        return torch.where(mask.unsqueeze(-1), mask_token.to(flat.dtype), flat).reshape(out.shape)

    handle = vit.patch_embed.register_forward_hook(replace)
    try:
        return vit.forward_features(x)
    finally:
        handle.remove()


def _per_token(head: nn.Module, tokens: Tensor) -> Tensor:
    """A head on every token: ``[B, n, D]`` -> ``[B, n, K]`` (tokens flattened, so a BN head sees ``[B n, D]``)."""
    return head(tokens.flatten(0, 1)).unflatten(0, tokens.shape[:2])


@register_method("ibot")
class IBOT(DINO):
    """iBOT, masked image modelling with an online tokenizer (Zhou et al. 2022, ICLR, arXiv:2111.07832), with
    DINOv2's Sinkhorn-Knopp centring and KoLeo regulariser as options (Oquab et al. 2023, arXiv:2304.07193).

    The student ViT sees the block-masked global crops (and unmasked local crops); its teacher, an EMA, sees
    the global crops unmasked. Loss: ``cls_weight`` x DINO's [CLS] loss (:func:`~selfsup.losses.dino_loss`)
    + ``patch_weight`` x :func:`~selfsup.losses.ibot.ibot_patch_loss` on the masked patches
    (+ ``koleo_weight`` x :func:`~selfsup.losses.koleo.koleo_loss` per global crop).

    Shapes: ``views`` 2 global ``[B, C, S, S]`` then N local ``[B, C, s, s]``; masks bool ``[B, n]`` per global
    crop (n = (S / p)^2 patches); [CLS] logits ``[B, out_dim]``, patch logits ``[B, n, patch_out_dim]``; buffers
    ``center`` ``[1, out_dim]``, ``patch_center`` ``[1, patch_out_dim]``. ``encoder`` is the teacher's ViT.
    Scheduled values: DINO's, ``teacher_patch_temp`` and ``mask_step`` (which seeds the masks).
    """

    config_class = IBOTConfig
    min_batch_size = 2  # KoLeo's nearest neighbour and Sinkhorn's equipartition need a batch
    needs_vit = "masks patch tokens (a learned mask token replaces masked patch embeddings)"
    tiny = {**DINO.tiny, "num_local_crops": 0}
    paper = "Zhou et al. 2022, ICLR, arXiv:2111.07832"

    def __init__(self, cfg: IBOTConfig, backbone: nn.Module, image_size: int, num_classes: int = 0):
        require_vit(backbone, "method.name=ibot", image_size=image_size)
        if cfg.shared_head and cfg.patch_out_dim not in (None, cfg.out_dim):
            raise ConfigError(f"method.patch_out_dim={cfg.patch_out_dim} differs from method.out_dim={cfg.out_dim}: "
                              "a shared head has one output; set method.shared_head=false")
        super().__init__(cfg, backbone, image_size, num_classes)
        self.grid = patch_grid(backbone, image_size, image_size)
        self.mask_token = nn.Parameter(torch.zeros(backbone.num_features))  # the student's [MASK] embedding
        patch_dim = cfg.patch_out_dim or cfg.out_dim
        if not cfg.shared_head:
            self.patch_head = DINOHead(backbone.num_features, patch_dim, cfg.hidden_dim, cfg.bottleneck_dim,
                                       cfg.use_bn_in_head, cfg.norm_last_layer)
            self.teacher_patch_head = frozen_copy(self.patch_head)
        self.register_buffer("patch_center", torch.zeros(1, patch_dim))
        self._patch_sum: Tensor | None = None
        self._patch_count = 0
        self.draws = MaskDraws()

    def _patch_heads(self) -> tuple[nn.Module, nn.Module]:
        """(student, teacher) head for patch tokens: the [CLS] heads when shared."""
        if self.cfg.shared_head:
            return self.head, self.teacher_head
        return self.patch_head, self.teacher_patch_head

    def schedules(self, total_steps: int, steps_per_epoch: int) -> dict[str, np.ndarray]:
        """DINO's schedules, ``teacher_patch_temp`` (the same linear warm-up) and ``mask_step``."""
        cfg = self.cfg
        out = super().schedules(total_steps, steps_per_epoch)
        warm = min(int(round(cfg.warmup_teacher_temp_epochs * steps_per_epoch)), total_steps)
        temp = np.full(total_steps, cfg.teacher_patch_temp, dtype=np.float64)
        temp[:warm] = np.linspace(cfg.warmup_teacher_patch_temp, cfg.teacher_patch_temp, warm, endpoint=False)
        return {**out, "teacher_patch_temp": temp, "mask_step": MaskDraws.schedule(total_steps)}

    def masks(self, batch: int, step: int, micro: int, device: torch.device) -> list[Tensor]:
        """This process's masks of the 2 global crops: bool ``[batch, n]`` each, True = masked. Drawn for the
        global batch from a generator seeded by (run seed, step, micro-batch) and sliced by process."""
        cfg, world = self.cfg, world_size()
        generator = self.draws.generator(step, micro, device)
        masks = []
        for _ in range(2):
            u = torch.rand(2, world * batch, generator=generator, device=device)
            ratio = cfg.mask_ratio[0] + u[1] * (cfg.mask_ratio[1] - cfg.mask_ratio[0])
            ratio = torch.where(u[0] < cfg.mask_probability, ratio, torch.zeros_like(ratio))
            drawn = block_mask(world * batch, self.grid, ratio, generator, aspect=tuple(cfg.mask_aspect))
            masks.append(drawn[process_rows(batch, rank(), world)])
        return masks

    def _targets(self, logits: Tensor, center: Tensor, temp: float) -> Tensor:
        """Teacher targets ``[R, K]`` (rows sum to 1): ``softmax((t - c) / temp)``, or Sinkhorn-Knopp codes of
        ``t`` (epsilon = temp) over the rows of every process."""
        if self.cfg.centering == "sinkhorn":
            return sinkhorn_knopp(logits, temp, self.cfg.sinkhorn_iterations, gather=world_size() > 1)
        return F.softmax((logits.float() - center) / temp, dim=-1)

    def training_step(self, views: list[Tensor], labels: Tensor, values: dict[str, float]) -> dict[str, Tensor]:
        """``views``: 2 global ``[B, C, S, S]`` then N local ``[B, C, s, s]``; returns the loss and its terms."""
        cfg, vit = self.cfg, self.backbone
        batch, prefix = views[0].shape[0], vit.num_prefix_tokens
        step = int(values["mask_step"])
        masks = self.masks(batch, step, self.draws.micro_batch(step), views[0].device)
        mask = torch.cat(masks)  # [2B, n]
        student_head, teacher_patch_head = self._patch_heads()
        with torch.no_grad():
            tokens = self.teacher_backbone.forward_features(torch.cat(views[:2]))  # [2B, P + n, D]
            t_cls = self.teacher_head(self.teacher_backbone.forward_head(tokens, pre_logits=True))  # [2B, K]
            t_patch = _per_token(teacher_patch_head, tokens[:, prefix:])  # [2B, n, K_p]
        tokens = forward_masked(vit, torch.cat(views[:2]), mask, self.mask_token)  # [2B, P + n, D]
        s_features = vit.forward_head(tokens, pre_logits=True)  # [2B, D]
        locals_ = [vit(torch.cat(views[2:]))] if len(views) > 2 else []  # [L B, D]
        s_cls = list(self.head(torch.cat([s_features, *locals_])).chunk(len(views)))  # V x [B, K]
        s_patch = _per_token(student_head, tokens[:, prefix:])  # [2B, n, K_p]

        temp, patch_temp = values["teacher_temp"], values["teacher_patch_temp"]
        if cfg.centering == "centre":
            self._stash_center(t_cls)
            self._stash_patch_center(t_patch)
            teacher_logits, center, cls_temp = list(t_cls.chunk(2)), self.center, temp
        else:  # Sinkhorn codes q enter DINO's loss as log q (softmax(log q) = q), with no centre, temperature 1
            q = self._targets(t_cls, self.center, temp).clamp_min(1e-30).log()
            teacher_logits, center, cls_temp = list(q.chunk(2)), torch.zeros_like(self.center), 1.0
        cls_loss = dino_loss(s_cls, teacher_logits, center, cfg.student_temp, cls_temp)
        q_patch = torch.zeros_like(t_patch, dtype=torch.float32)
        if cfg.centering == "centre":
            q_patch = self._targets(t_patch, self.patch_center, patch_temp)
        elif bool(mask.any()) or world_size() > 1:  # Sinkhorn on the masked patches only (DINOv2)
            picked = t_patch[mask] if bool(mask.any()) else t_patch.new_zeros(1, t_patch.shape[-1])
            codes = self._targets(picked, self.patch_center, patch_temp)
            q_patch[mask] = codes[: int(mask.sum())].to(q_patch.dtype)
        patch_loss = ibot_patch_loss(list(s_patch.chunk(2)), list(q_patch.chunk(2)), masks, cfg.student_temp)
        loss = cfg.cls_weight * cls_loss + cfg.patch_weight * patch_loss
        out = {"cls_loss": cls_loss.detach(), "patch_loss": patch_loss.detach(),
               "teacher_entropy": teacher_entropy(teacher_logits, center, cls_temp),
               "mask_share": mask.float().mean(), "features": s_features.detach()}
        if cfg.koleo_weight > 0:
            koleo = sum(koleo_loss(c) for c in s_features.chunk(2))
            loss = loss + cfg.koleo_weight * koleo
            out["koleo"] = koleo.detach()
        return {"loss": loss, **out}

    def _stash_patch_center(self, teacher_patch: Tensor) -> None:
        """Keep this micro-batch's mean teacher patch output (over images and patches, as iBOT's code)."""
        mean = teacher_patch.detach().float().mean(dim=(0, 1)).unsqueeze(0)  # [1, K_p]
        self._patch_sum = mean if self._patch_sum is None else self._patch_sum + mean
        self._patch_count += 1

    def on_after_backward(self, values: dict[str, float]) -> None:
        """Cancel the last layers' gradients during the first epoch(s), the patch head's too."""
        super().on_after_backward(values)
        if not self.cfg.shared_head and values.get("freeze_last_layer", 0.0) > 0.5:
            for p in self.patch_head.last_layer.parameters():
                p.grad = None

    @torch.no_grad()
    def on_step_end(self, values: dict[str, float]) -> None:
        """DINO's centre update and teacher EMA, then the patch centre and the separate patch head's EMA."""
        super().on_step_end(values)
        if self._patch_sum is not None:
            m = self.cfg.center_momentum_patch
            batch_center = all_reduce_mean(self._patch_sum / self._patch_count)
            self.patch_center.mul_(m).add_(batch_center, alpha=1.0 - m)
            self._patch_sum, self._patch_count = None, 0
        if not self.cfg.shared_head:
            ema_update(self.teacher_patch_head, self.patch_head, values["teacher_momentum"])
