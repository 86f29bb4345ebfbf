"""Jigsaw permutation sets of maximal average Hamming distance, cached on disk.

Noroozi & Favaro, "Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles",
ECCV 2016 (arXiv:1603.09246), Algorithm 1: start from a random permutation of the 9 tiles, then
repeatedly add the permutation whose *summed* Hamming distance to the permutations chosen so far
is largest (equivalently the largest average distance), searching all 9! = 362880 permutations.

Construction used here (exact, no candidate pool), :func:`greedy_permutations`:

1. ``P_all``: the 9! permutations of ``0..8`` in lexicographic order (``itertools.permutations``).
2. The first permutation is ``P_all[j0]``, ``j0 = numpy.random.default_rng(seed).integers(9!)``.
3. Each further step takes ``argmax_k sum_{p in P} d_H(p, P_all[k])`` over the candidates ``k``
   still allowed, ties broken by the lowest lexicographic index (``numpy.argmax``). A candidate is
   allowed when its Hamming distance to every chosen permutation is ``>= min_distance``.

Guarantee: the set has ``n`` distinct permutations and every pair differs in at least
``min_distance`` positions (two distinct permutations always differ in >= 2, so
``min_distance=2`` is Algorithm 1 as published). A floor above 2 only removes candidates that
sit too close to the set; in our runs the average distance is unchanged (8.08 for n=100, 8.008
for n=1000, seed 0) while the minimum rises from 2 to the floor. Feasible floors for seed 0:
6 for n=100, 5 for n=1000; an infeasible floor raises :class:`ConfigError`.

The running sums are vectorised over all 9! candidates (one ``[9!, 9]`` comparison per added
permutation): about 0.5 s for n=100 and 6 s for n=1000 on one CPU core, once; the result is cached
under ``$SELFSUP_CACHE`` (default ``~/.cache/selfsup``) in ``jigsaw/``, keyed by n, floor and seed.
"""
from __future__ import annotations

import itertools
from functools import lru_cache
from pathlib import Path

import numpy as np

from selfsup.core.errors import ConfigError
from selfsup.core.files import atomic_write
from selfsup.data import default_cache_dir

__all__ = ["NUM_TILES", "all_permutations", "greedy_permutations", "permutation_set", "hamming_matrix"]

NUM_TILES = 9  # a 3x3 puzzle
_VERSION = 1  # bump when the construction changes, so stale cache files are not reused


@lru_cache(maxsize=1)
def all_permutations() -> np.ndarray:
    """All 9! permutations of ``0..8`` in lexicographic order: int8 ``[362880, 9]`` (read-only)."""
    perms = np.array(list(itertools.permutations(range(NUM_TILES))), dtype=np.int8)
    perms.setflags(write=False)
    return perms


def hamming_matrix(perms: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances of ``perms`` ``[n, 9]``: int ``[n, n]`` (positions that differ)."""
    return (perms[:, None, :] != perms[None, :, :]).sum(-1)


def greedy_permutations(n: int, seed: int = 0, min_distance: int = 2) -> np.ndarray:
    """Algorithm 1 of Noroozi & Favaro with a Hamming floor (see the module docstring).

    Args:
        n: number of permutations, 1 <= n <= 9!.
        seed: picks the first permutation; everything after it is deterministic.
        min_distance: every pair of the set differs in at least this many positions (2..9).
    Returns:
        int64 ``[n, 9]``; row ``k`` is permutation ``k`` (class ``k`` of the jigsaw classifier).
    Raises:
        ConfigError: bad ``n`` / ``min_distance``, or no ``n``-set with that floor is reachable.
    """
    cands = all_permutations()
    if not 1 <= n <= len(cands):
        raise ConfigError(f"method.num_permutations={n}: must lie in [1, {len(cands)}]")
    if not 2 <= min_distance <= NUM_TILES:
        raise ConfigError(f"method.perm_min_distance={min_distance}: must lie in [2, {NUM_TILES}]")
    total = np.zeros(len(cands), dtype=np.int32)  # summed distance to the chosen set
    nearest = np.full(len(cands), NUM_TILES, dtype=np.int8)  # distance to the closest chosen one
    j = int(np.random.default_rng(seed).integers(len(cands)))
    chosen = []
    for i in range(n):
        chosen.append(j)
        dist = (cands != cands[j]).sum(axis=1, dtype=np.int8)
        total += dist
        np.minimum(nearest, dist, out=nearest)  # the chosen one gets 0, so it is never allowed again
        if i == n - 1:
            break
        score = np.where(nearest >= min_distance, total, -1)
        j = int(score.argmax())
        if score[j] < 0:
            raise ConfigError(
                f"method.perm_min_distance={min_distance}: the greedy set stops at {i + 1} of {n} "
                f"permutations; lower the floor or method.num_permutations"
            )
    return cands[chosen].astype(np.int64)


def _cache_path(n: int, seed: int, min_distance: int, cache_dir: Path | None) -> Path:
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "jigsaw" / f"permutations-v{_VERSION}-n{n}-d{min_distance}-seed{seed}.npy"


def _valid(perms: np.ndarray, n: int, min_distance: int) -> bool:
    if perms.shape != (n, NUM_TILES) or perms.dtype != np.int64:
        return False
    if not (np.sort(perms, axis=1) == np.arange(NUM_TILES)).all():
        return False
    if 1 < n <= 2000:  # the floor check is O(n^2 * 9); skipped for huge sets
        dist = hamming_matrix(perms) + NUM_TILES * np.eye(n, dtype=np.int64)
        return bool(dist.min() >= min_distance)
    return True


def permutation_set(n: int, seed: int = 0, min_distance: int = 2, cache_dir: Path | str | None = None) -> np.ndarray:
    """The greedy set of :func:`greedy_permutations`, read from or written to the disk cache.

    The file is ``<cache>/jigsaw/permutations-v1-n{n}-d{min_distance}-seed{seed}.npy``; it is
    written atomically (temporary file + rename), so concurrent processes never read half a file.
    A file that does not hold a valid set (wrong shape, not permutations, floor broken) is
    recomputed and replaced: the cache only ever saves time, never changes the result.
    Returns int64 ``[n, 9]``.
    """
    path = _cache_path(n, seed, min_distance, Path(cache_dir) if cache_dir is not None else None)
    if path.is_file():
        try:
            perms = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            perms = None
        if perms is not None and _valid(perms, n, min_distance):
            return perms
    perms = greedy_permutations(n, seed, min_distance)
    _write_atomic(path, perms)
    return perms


def _write_atomic(path: Path, perms: np.ndarray) -> None:
    """Save ``perms`` to ``path`` via a temporary file in the same folder and a rename.

    An unwritable cache folder is tolerated: it only costs the recomputation next time.
    """
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, perms, allow_pickle=False)

    try:
        atomic_write(path, write)
    except OSError:  # PathError too: the next run computes the set again
        pass
