"""Online quality monitoring during pretraining, for every method alike (``eval.online*`` keys).

What solo-learn users watch while a run trains, without touching the training itself:

- **online kNN** (``knn_online``, every ``eval.online_every`` epochs or ``eval.online_every_steps``
  steps): the encoder, in eval mode, embeds a fixed, seeded subset of the training split (the bank)
  and a disjoint held-out subset of it (the queries); a weighted kNN (Wu et al. 2018, see
  :func:`~selfsup.evaluation.knn.knn_classify`) scores the queries against the bank;
- **online linear classifier** (``online_linear_loss`` / ``online_linear_acc``, every step): a linear
  layer trained with Adam on the *detached* backbone features the method returns from
  ``training_step`` (``"features"``); its loss never reaches the encoder, and its weights and optimizer
  state are checkpointed, so a resumed run continues it exactly;
- **collapse indicators** (every logged row): ``embedding_std``, the mean over dimensions of the
  per-dimension standard deviation of the L2-normalised embeddings (Chen & He 2021, SimSiam, sec. 4.1:
  about ``1 / sqrt(d)`` when healthy, 0 when collapsed), and ``effective_rank``, ``exp`` of the
  entropy of the normalised singular values (Roy & Vetterli 2007, "The effective rank: a measure of
  effective dimensionality"), from the method's ``"embeddings"`` (or its ``"features"``).

Labels are read here only, never by a method. Unlabelled training data (an image folder without class
sub-folders) turn the online kNN and linear classifier off, with one warning; data of one class get one warning
that their accuracies mean nothing. The monitor draws no number from the global RNG (its
subsets come from its own seeded generator, the classifier starts at zero) and never changes the data
order or a BN statistic, so the weights of a run are the same with the monitor on or off.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.config import EvalConfig
from selfsup.core.distributed import all_reduce_mean, gather_no_grad
from selfsup.data import Split
from selfsup.evaluation.features import extract_features
from selfsup.evaluation.knn import knn_classify
from selfsup.evaluation.protocols import warn_if_one_class

MONITOR_SEED = 0x6D6F6E  # "mon": the subsets' own generator, offset by trainer.seed


def embedding_std(z: torch.Tensor) -> float:
    """Mean over dimensions of the per-dimension std of the L2-normalised rows of ``z`` [N, d]
    (population std): ``1 / sqrt(d)`` for isotropic embeddings, 0 when every row is the same."""
    z = F.normalize(z.detach().float(), dim=1)
    return float(z.std(dim=0, unbiased=False).mean())


def effective_rank(z: torch.Tensor, eps: float = 1e-12) -> float:
    """``exp(H(p))`` with ``p = s / sum(s)`` over the singular values ``s`` of ``z`` [N, d]
    (Roy & Vetterli 2007): between 1 (rank one) and ``min(N, d)`` (all singular values equal)."""
    s = torch.linalg.svdvals(z.detach().float())
    p = s / s.sum().clamp_min(eps)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def collapse_indicators(z: torch.Tensor) -> dict[str, float]:
    """``{"embedding_std", "effective_rank"}`` of embeddings ``z`` [N, d]."""
    return {"embedding_std": embedding_std(z), "effective_rank": effective_rank(z)}


class OnlineMonitor:
    """The periodic kNN, the online linear classifier and the collapse indicators of one run.

    Args:
        cfg: the ``eval`` section (``online*`` keys).
        data: the training split (labels and ``batch(indices)`` are read here only).
        num_features: D of the encoder's features.
        steps_per_epoch: to turn ``online_every`` epochs into steps.
        seed: ``trainer.seed`` (the subsets are a function of it).
        device: where the subsets, the classifier and its optimizer live.
    """

    def __init__(self, cfg: EvalConfig, data: Split, *, num_features: int, steps_per_epoch: int, seed: int,
                 device: torch.device):
        self.cfg, self.data, self.device = cfg, data, device
        every = cfg.online_every_steps or round(cfg.online_every * steps_per_epoch)
        self.knn_every = max(1, int(every)) if (cfg.online_every_steps or cfg.online_every > 0) else 0
        self.labelled = bool(data.classes)  # unlabelled images: only the collapse indicators
        if not self.labelled:
            self.knn_every = 0
            warnings.warn("the training data have no labels (an image folder without class sub-folders): the online "
                          "kNN and linear classifier (eval.online) are off; the collapse indicators stay on")
        else:
            warn_if_one_class(data)
        self.num_classes = max(len(data.classes), 1)
        # skip_init: no draw from the global RNG; a zero start (softmax regression is convex)
        self.head = torch.nn.utils.skip_init(nn.Linear, num_features, self.num_classes, device=device)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()
        self.optimizer = torch.optim.Adam(self.head.parameters(), lr=cfg.online_linear_lr)
        self.embeddings: torch.Tensor | None = None
        self._subsets, self._seed = None, seed

    # ------------------------------------------------------------------ per step

    def update(self, outputs: list[dict[str, torch.Tensor]], labels: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """One step of the online classifier on this step's micro-batches: ``outputs[i]`` holds the
        method's detached ``"features"`` [V * b, D] (V views, view-major) for ``labels[i]`` [b].
        Returns ``{"online_linear_loss", "online_linear_acc"}`` (tensors, no host sync), or ``{}``
        when the method returns no features."""
        pairs = [(out["features"], y) for out, y in zip(outputs, labels) if "features" in out]
        found = [out.get("embeddings", out.get("features")) for out in outputs]
        found = [z for z in found if z is not None]
        self.embeddings = torch.cat(found).detach() if found else None
        if not pairs or not self.labelled:
            return {}
        x = torch.cat([f.detach().flatten(1) for f, _ in pairs]).to(self.head.weight.dtype)
        y = torch.cat([y.repeat(f.shape[0] // y.shape[0]) for f, y in pairs])
        with torch.enable_grad():
            logits = self.head(x)
            loss = F.cross_entropy(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        for p in self.head.parameters():  # the global batch's gradient (equal shares per process)
            p.grad = all_reduce_mean(p.grad)
        self.optimizer.step()
        acc = (logits.detach().argmax(1) == y).float().mean()
        return {"online_linear_loss": loss.detach(), "online_linear_acc": acc}

    def indicators(self, gather: bool) -> dict[str, float]:
        """The collapse indicators of the last step's embeddings (all processes' when ``gather``;
        every process must call it then)."""
        if self.embeddings is None:
            return {}
        z = gather_no_grad(self.embeddings) if gather else self.embeddings
        return collapse_indicators(z.flatten(1))

    # ------------------------------------------------------------------ periodic kNN

    def knn_due(self, step: int) -> bool:
        return self.knn_every > 0 and step % self.knn_every == 0

    def subsets(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(bank images, bank labels, query images, query labels): disjoint, seeded, read once."""
        if self._subsets is None:
            n = len(self.data)
            gen = torch.Generator().manual_seed(MONITOR_SEED + self._seed)
            order = torch.randperm(n, generator=gen)
            queries = min(self.cfg.online_knn_queries, n // 2)
            bank = min(self.cfg.online_knn_bank, n - queries)
            parts = []
            for idx in (order[:bank], order[bank:bank + queries]):
                images, labels = self.data.batch(idx.sort().values)
                parts += [images.to(self.device), labels]
            self._subsets = tuple(parts)
        return self._subsets

    def knn(self, encoder: nn.Module, shard: bool) -> dict[str, float]:
        """``{"knn_online": top-1}`` of the query subset against the bank (every process must call it
        when ``shard``: each embeds its share and all get every feature)."""
        bank, bank_y, queries, queries_y = self.subsets()
        features = [extract_features(encoder, images, self.data.mean, self.data.std, batch_size=self.cfg.batch_size,
                                     device=self.device, progress=False, shard=shard) for images in (bank, queries)]
        k = self.cfg.online_knn_k
        result = knn_classify(features[0], bank_y, features[1], queries_y, ks=[k],
                              temperature=self.cfg.knn_temperature, num_classes=self.num_classes, backend="torch",
                              device="cpu")
        return {"knn_online": result[f"knn_k{k}"]["top1"]}

    # ------------------------------------------------------------------ checkpoint

    def state_dict(self) -> dict:
        return {"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])


def monitor_keys_out(out: dict[str, torch.Tensor], keys: tuple[str, ...]) -> tuple[dict, dict]:
    """Split a ``training_step`` output into (logged scalars, the monitor's tensors)."""
    return ({k: v for k, v in out.items() if k not in keys}, {k: out[k] for k in keys if k in out})

