"""What every split decoded on demand shares: the :class:`~selfsup.data.split.Split` protocol around one
``decode_one(i)``.

A streamed ImageFolder (:class:`~selfsup.data.streaming.StreamingImageFolder`) and WebDataset shards
(:class:`~selfsup.data.shards.ShardSplit`) hold no ``images`` tensor: DataLoader workers decode each
sample to a uint8 ``[3, S, S]`` canvas when a batch asks for it. They differ only in where a sample's
bytes come from; batching, the stand-ins for unreadable samples, the step-keyed and file-order
streams and the log line are written once here.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch

from selfsup.data.step_loader import BatchSampler, StepStream, default_workers, report_unreadable, stream_images

__all__ = ["OnDemandSplit"]


class OnDemandSplit:
    """Mixin of a split decoded on demand. The subclass (a dataclass) has ``labels`` (int64 ``[N]``),
    ``image_size`` (S), ``mean``, ``std``, ``setting``, ``on_bad_file``, ``stats_from``, ``workers``, and
    implements ``__len__``, :meth:`decode_one`, :meth:`sample_name` and :meth:`source_line`."""

    image_size: int
    labels: torch.Tensor

    def decode_one(self, i: int) -> torch.Tensor:
        """Sample ``i`` as uint8 ``[3, S, S]``; raises on an unreadable sample."""
        raise NotImplementedError

    def sample_name(self, i: int) -> str:
        """How messages name sample ``i`` (a file path, a shard key)."""
        raise NotImplementedError

    def source_line(self) -> str:
        """The start of :meth:`describe`: what is read, from where, how many."""
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one decoded image, as ``ImageDataset.shape``."""
        return 3, self.image_size, self.image_size

    @property
    def is_image(self) -> bool:
        """Always: decoded uint8 RGB images."""
        return True

    @property
    def has_padding(self) -> bool:
        return False

    @property
    def random_access(self) -> bool:
        """Never cheap: :meth:`batch` decodes in this process (workers serve only step or file order)."""
        return False

    def grey_to_rgb(self):
        """As it is: samples are decoded to RGB."""
        return self

    def describe(self) -> str:
        """One line for the log: what is read, how, and where its normalisation comes from."""
        workers = self.workers if self.workers is not None else default_workers()
        fmt = lambda values: "(" + ", ".join(f"{v:.4f}" for v in values) + ")"  # noqa: E731
        return (f"{self.source_line()} decoded to uint8 {'x'.join(map(str, self.shape))} by {workers} DataLoader "
                f"worker(s) per process; mean {fmt(self.mean)} std {fmt(self.std)} estimated on {self.stats_from} of them")

    def decode(self, indices: torch.Tensor | list[int] | range) -> tuple[torch.Tensor, torch.Tensor, list[list[str]]]:
        """Decode samples ``indices``: ``(uint8 [n, 3, S, S], int64 [n] labels, [[name, reason], ...])``.

        An unreadable sample's slot holds another readable image of the same call (its label too)
        and the sample is listed in the third value; when none is readable every slot is zero.
        Raising is the caller's business (:func:`~selfsup.data.step_loader.stream_batches`), so that a
        DataLoader worker never raises and the error reaches the user as one line.
        """
        idx = [int(i) for i in indices]
        out = torch.zeros((len(idx), *self.shape), dtype=torch.uint8)
        labels = self.labels[idx].clone() if idx else torch.empty(0, dtype=torch.int64)
        bad: list[list[str]] = []
        good: list[int] = []
        for slot, i in enumerate(idx):
            try:
                out[slot] = self.decode_one(i)
            except Exception as err:  # corrupt, truncated, not an image: reported by the caller
                bad.append([self.sample_name(i), (str(err).strip().splitlines() or [type(err).__name__])[0][:80]])
                continue
            good.append(slot)
        if bad and good:
            for k, slot in enumerate(sorted(set(range(len(idx))) - set(good))):  # deterministic stand-ins
                donor = good[k % len(good)]
                out[slot], labels[slot] = out[donor], labels[donor]
        return out, labels, bad

    def batch(self, indices: torch.Tensor | Iterable[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(uint8 [n, 3, S, S], int64 [n])`` of ``indices``, decoded here; unreadable samples as
        ``data.on_bad_file`` says (one warning per sample, or a DataError naming it)."""
        images, labels, bad = self.decode(indices)
        if bad:
            report_unreadable(self, bad, set(), len(images))
        return images, labels

    def step_batches(self, sampler: BatchSampler, *, stop: int, rank: int = 0, world: int = 1,
                     device: torch.device | str | None = None) -> StepStream:
        """The trainer's source of step ``s``'s batch (``sampler.indices(s, rank, world)``), decoded
        ahead by DataLoader workers over steps up to ``stop``; pinned when ``device`` is a GPU."""
        pin = device is not None and torch.device(device).type == "cuda"
        return StepStream(self, sampler, stop=stop, rank=rank, world=world, pin_memory=pin)

    def sequential_batches(self, batch_size: int, *, pin_memory: bool = False) -> Iterator[torch.Tensor]:
        """The split in index order as uint8 batches (:func:`~selfsup.data.step_loader.stream_images`)."""
        return stream_images(self, batch_size, pin_memory=pin_memory)
