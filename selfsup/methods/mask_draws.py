"""Where a masked-image method's mask generator comes from: seeded by (run seed, step, micro-batch).

:mod:`selfsup.data.masks` draws every mask from an explicit ``torch.Generator``; this helper seeds it with
:func:`~selfsup.data.masks.mask_seed` from the run seed (a draw from the global RNG when the method is built,
which ``selfsup train`` seeds with ``trainer.seed``), the step (the scheduled value ``mask_step``) and the
micro-batch (the how-many-th call of that step, for gradient accumulation). A method draws for the global
batch and keeps its process's rows (:func:`~selfsup.data.masks.process_rows`), so masks are a function of
(seed, step, process) and a resumed run masks as an uninterrupted one.
"""
from __future__ import annotations

import numpy as np
import torch

from selfsup.data.masks import mask_seed


class MaskDraws:
    """The run's mask seed and the micro-batch counter of one method (not a module: nothing to checkpoint,
    the seed is redrawn identically when a resumed run rebuilds the method from the same ``trainer.seed``)."""

    def __init__(self) -> None:
        self.seed = int(torch.randint(0, 2**62, (1,)).item())
        self._step, self._micro = -1, 0

    @staticmethod
    def schedule(total_steps: int) -> np.ndarray:
        """The ``mask_step`` schedule: the step itself."""
        return np.arange(total_steps, dtype=np.float64)

    def micro_batch(self, step: int) -> int:
        """Which micro-batch of ``step`` this call is (0 at the step's first call; gradient accumulation adds)."""
        if step != self._step:
            self._step, self._micro = step, 0
        self._micro += 1
        return self._micro - 1

    def generator(self, step: int, micro: int, device: torch.device) -> torch.Generator:
        """A generator on ``device`` seeded by (run seed, ``step``, ``micro``)."""
        return torch.Generator(device=device).manual_seed(mask_seed(self.seed, step, micro))
