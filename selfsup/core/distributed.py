"""The collectives every method uses, in one place.

All of them are no-ops in a single process, so methods call them unconditionally.
"""
from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _collective_device() -> torch.device:
    """Where this group's collectives take their tensors: the current CUDA device under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's slice.

    The gradient of the global loss w.r.t. the local tensor is the sum over ranks of each rank's
    loss gradient w.r.t. it; returning only the local slice of the local gradient (without the
    all-reduce) silently drops the other ranks' terms.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        n = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * n : (dist.get_rank() + 1) * n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` [n, ...] from every rank into [world * n, ...], differentiably."""
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` [n, ...] from every rank (e.g. MoCo keys before they enter the queue)."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Average ``x`` over ranks (e.g. DINO's centre); returns a new tensor."""
    if world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x / world_size()


@torch.no_grad()
def mean_over_processes(values: dict[str, float | None]) -> dict[str, float | None]:
    """Average logged scalars over ranks (each rank's value is the mean over its equal share of the
    global batch, so this is the global batch's value); ``None`` entries stay ``None``. Every rank
    must call it with the same keys."""
    if world_size() == 1:
        return values
    keys = sorted(k for k, v in values.items() if v is not None)
    if not keys:
        return values
    x = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return {**values, **dict(zip(keys, (x / world_size()).tolist()))}


def shard_bounds(n: int) -> tuple[int, int]:
    """This rank's contiguous share ``[start, stop)`` of ``n`` rows.

    Rank ``r`` of ``W`` takes ``n // W`` rows, plus one for the first ``n % W`` ranks (as
    ``torch.tensor_split``): shards differ by at most one row, follow rank order and cover
    ``0 .. n - 1`` exactly once (9 rows on 2 ranks: ``(0, 5)`` and ``(5, 9)``). One process: ``(0, n)``.
    """
    base, extra = divmod(n, world_size())
    r = rank()
    start = r * base + min(r, extra)
    return start, start + base + int(r < extra)


@torch.no_grad()
def gather_rows(x: torch.Tensor, total: int) -> torch.Tensor:
    """Every rank's row block ``x`` [n_r, ...] concatenated in rank order: [total, ...] on every rank.

    The blocks may differ in length (the shards of :func:`shard_bounds`, or an empty one): each is
    padded to the longest for one ``all_gather`` and the padding is cut off again, so every row
    appears exactly once. ``total`` must be the sum of the blocks' lengths (checked on every rank
    alike, so all raise together); trailing shape and dtype must agree across ranks. Returned on
    ``x``'s device, without gradient. One process: ``x`` itself.
    """
    if world_size() == 1:
        if x.shape[0] != total:
            raise ValueError(f"gather_rows: the block has {x.shape[0]} rows, expected {total}")
        return x
    device = _collective_device()
    mine = torch.tensor([x.shape[0]], dtype=torch.int64, device=device)
    counts = [torch.empty_like(mine) for _ in range(world_size())]
    dist.all_gather(counts, mine)
    lengths = [int(c) for c in counts]
    if sum(lengths) != total:
        raise ValueError(f"gather_rows: the ranks' blocks hold {lengths} rows, {sum(lengths)} in all, expected {total}")
    padded = x.new_zeros((max(lengths), *x.shape[1:]), device=device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in lengths]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, lengths)]).to(x.device)


def broadcast_tensor(x: torch.Tensor | None) -> torch.Tensor | None:
    """Rank 0's ``x`` (a tensor of any shape, or ``None``) on every rank; what other ranks pass is ignored.

    Rank 0 gets its own ``x`` back; the others receive a copy on the CPU (e.g. features rank 0 alone
    read from its cache). One process: ``x``.
    """
    if world_size() == 1:
        return x
    header = [None if x is None else (tuple(x.shape), x.dtype)]
    dist.broadcast_object_list(header, src=0)
    if header[0] is None:
        return None
    shape, dtype = header[0]
    device = _collective_device()
    buffer = x.contiguous().to(device) if rank() == 0 else torch.empty(shape, dtype=dtype, device=device)
    dist.broadcast(buffer, src=0)
    return x if rank() == 0 else buffer.cpu()


@torch.no_grad()
def broadcast_module_state(module: torch.nn.Module) -> None:
    """Overwrite every rank's parameters and buffers of ``module`` with rank 0's, in place.

    For a module every rank must hold identically although nothing made it so: a freshly
    initialised encoder (seeded initialisation need not agree across ranks or devices), or
    per-process BatchNorm statistics after training. Every rank must call it with the same
    architecture (tensors are matched by order). One process: nothing to do.
    """
    if world_size() == 1:
        return
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        data = tensor.detach()  # same storage
        buffer = data if data.is_contiguous() else data.contiguous()
        dist.broadcast(buffer, src=0)
        if buffer is not data:
            data.copy_(buffer)


class SyncBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """Batch normalisation whose training statistics are those of the global batch, on any device.

    ``torch.nn.SyncBatchNorm`` runs on CUDA only; this one works over any process group (gloo on
    CPU included), so 2 CPU processes compute what 1 process computes on their union. The global
    mean and (biased) variance come from one differentiable all-gather of every rank's mean, sum of
    squared deviations and count (one collective forward, one backward, per layer); the running
    statistics are updated as ``nn.BatchNorm`` does, with the global mean and unbiased variance.
    Normalisation per Ioffe & Szegedy 2015 (arXiv:1502.03167), statistics over all processes
    ("cross-GPU BN", Peng et al. 2018, arXiv:1711.07240). One process: plain ``F.batch_norm``.
    Input ``[B, C, *]`` (any number of trailing dims).
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input [B, C, ...], got {input.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_stats = self.training or not self.track_running_stats
        if world_size() == 1 or not batch_stats:
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # statistics in fp32 (or fp64) under autocast
        # One collective: every rank's (mean, sum of squared deviations, count), combined with Chan et
        # al.'s pairwise update (1979): stable (no E[x^2] - E[x]^2) and differentiable (gather_with_grad).
        local_mean = xf.mean(dims)
        local_m2 = (xf - local_mean.view(shape)).square().sum(dims)
        local_n = torch.full((1,), x.numel() // x.shape[1], dtype=xf.dtype, device=x.device)
        stats = gather_with_grad(torch.cat([local_mean, local_m2, local_n]).unsqueeze(0))  # [world, 2C + 1]
        c = x.shape[1]
        means, m2s, ns = stats[:, :c], stats[:, c : 2 * c], stats[:, 2 * c :].detach()
        count = ns.sum()
        mean = (ns * means).sum(0) / count
        var = (m2s + ns * (means - mean).square()).sum(0) / count  # biased: what BN normalises with
        centred = xf - mean.view(shape)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var.detach() * (count / (count - 1)) if count > 1 else var.detach()
                self.running_mean.mul_(1 - factor).add_(mean.detach().to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        return y.to(x.dtype)


_PLAIN_BN = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)


def convert_sync_batchnorm(module: torch.nn.Module, exclude: tuple[str, ...] = (), cuda: bool = False) -> torch.nn.Module:
    """Replace every plain ``BatchNorm1d/2d/3d`` in ``module`` by a synchronised one, sharing its
    parameters and buffers (so optimizers, EMA copies and checkpoints see the same tensors and the
    same state-dict keys). Submodules named in ``exclude`` (dotted names, e.g. MoCo's shuffle-BN
    key encoder) keep per-process statistics. Subclasses of BatchNorm (e.g. timm's BatchNormAct2d,
    which carries its activation) are left alone. ``cuda``: use ``torch.nn.SyncBatchNorm`` (fused
    CUDA kernels) instead of :class:`SyncBatchNorm`. Returns ``module`` (changed in place) or its
    replacement when ``module`` itself is a BatchNorm."""
    cls = torch.nn.SyncBatchNorm if cuda else SyncBatchNorm

    def convert(m: torch.nn.Module, prefix: str) -> torch.nn.Module:
        if prefix in exclude:
            return m
        if type(m) in _PLAIN_BN:
            new = cls(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
            if m.affine:
                new.weight, new.bias = m.weight, m.bias
            new.running_mean, new.running_var, new.num_batches_tracked = m.running_mean, m.running_var, m.num_batches_tracked
            new.train(m.training)
            return new
        for name, child in list(m.named_children()):
            replaced = convert(child, f"{prefix}.{name}" if prefix else name)
            if replaced is not child:
                setattr(m, name, replaced)
        return m

    module = convert(module, "")
    skipped = sorted({type(m).__name__ for name, m in module.named_modules()
                      if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                      and not isinstance(m, (SyncBatchNorm, torch.nn.SyncBatchNorm))
                      and not any(name == e or name.startswith(e + ".") for e in exclude)})
    if skipped:
        warnings.warn(f"trainer.sync_bn: {', '.join(skipped)} layers keep per-process statistics "
                      f"(only BatchNorm1d/2d/3d are synchronised)", stacklevel=2)
    return module


def broadcast_path(path):
    """Rank 0's ``path`` (a ``Path`` or ``None``) on every rank: e.g. the one checkpoint all ranks resume from."""
    if world_size() == 1:
        return path
    box = [None if path is None else str(path)]
    dist.broadcast_object_list(box, src=0)
    return None if box[0] is None else Path(box[0])
