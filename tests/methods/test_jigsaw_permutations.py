"""Jigsaw's permutation sets (selfsup.methods.jigsaw_permutations): Algorithm 1 of Noroozi & Favaro 2016
as published, the Hamming floor, the cache."""
import numpy as np
import pytest

from selfsup.core.errors import ConfigError
from selfsup.methods import jigsaw_permutations as jp

pytestmark = pytest.mark.usefixtures("selfsup_cache")


def algorithm_1(n: int, seed: int) -> np.ndarray:
    """Noroozi & Favaro, Algorithm 1, as written: D = Hamming(P, P_hat); D_bar = 1^T D; j = argmax D_bar."""
    p_hat = jp.all_permutations()
    remaining = np.ones(len(p_hat), dtype=bool)
    j = int(np.random.default_rng(seed).integers(len(p_hat)))
    chosen = []
    for _ in range(n):
        chosen.append(j)
        remaining[j] = False
        d = np.stack([(p_hat != p_hat[c]).sum(1) for c in chosen])  # [i, 9!]
        d_bar = np.where(remaining, d.sum(0), -1)
        j = int(np.argmax(d_bar))
    return p_hat[chosen].astype(np.int64)


def test_floor_two_is_algorithm_1_as_published():
    assert np.array_equal(jp.greedy_permutations(6, seed=3, min_distance=2), algorithm_1(6, seed=3))


@pytest.mark.parametrize("n,floor", [(30, 2), (100, 6)])
def test_permutation_set_is_distinct_and_keeps_its_hamming_floor(n, floor):
    perms = jp.greedy_permutations(n, seed=0, min_distance=floor)
    assert perms.shape == (n, 9) and (np.sort(perms, axis=1) == np.arange(9)).all()
    assert len({tuple(p) for p in perms}) == n
    dist = jp.hamming_matrix(perms)[~np.eye(n, dtype=bool)]
    assert dist.min() >= floor
    assert dist.mean() > 8.0  # maximal average distance (a random set averages 8.0 = 9 - 1)


def test_an_infeasible_floor_is_a_config_error():
    with pytest.raises(ConfigError, match="perm_min_distance"):
        jp.greedy_permutations(100, seed=0, min_distance=8)


def test_permutation_set_is_deterministic_and_cached(tmp_path, monkeypatch):
    first = jp.permutation_set(20, seed=1, min_distance=5)
    assert np.array_equal(first, jp.greedy_permutations(20, seed=1, min_distance=5))
    assert not np.array_equal(first, jp.permutation_set(20, seed=2, min_distance=5))
    path = tmp_path / "cache" / "jigsaw" / "permutations-v1-n20-d5-seed1.npy"
    assert np.array_equal(np.load(path), first)

    def forbidden(*args, **kwargs):
        raise AssertionError("recomputed although the cache holds the set")

    monkeypatch.setattr(jp, "greedy_permutations", forbidden)
    assert np.array_equal(jp.permutation_set(20, seed=1, min_distance=5), first)
    monkeypatch.undo()
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    np.save(path, np.zeros((20, 9), dtype=np.int64))  # a corrupt file is recomputed and replaced
    assert np.array_equal(jp.permutation_set(20, seed=1, min_distance=5), first)
    assert np.array_equal(np.load(path), first)
