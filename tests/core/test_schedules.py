"""Per-step schedules (selfsup.core.schedules): each ``trainer.schedule`` equals its formula, written out
here step by step, at every step of a run; warm-up edge cases; cosine stays today's array bit for bit."""
import math

import numpy as np
import pytest

from selfsup.core.errors import ConfigError
from selfsup.core.schedules import SCHEDULES, lr_schedule, warmup_cosine

# a run of 48 steps, 5 steps an epoch, 7 warm-up steps; peak 2, floor (min_lr) 0.1
T, E, W, P, F = 48, 5, 7, 2.0, 0.1
GAMMA, STEP_EPOCHS, MILESTONES = 0.5, 2.0, [3.0, 7.0]  # step: x0.5 every 10 steps; multistep: at steps 15 and 35


def formula(kind: str, s: int, w: int = W) -> float:
    """Step ``s``'s learning rate as the docs state it: linear warm-up 0 -> P over w steps, then ``kind``
    (decays never below F; step / multistep count epochs from the start of the run)."""
    if s < w:
        return P * s / w
    t = (s - w) / (T - w)
    if kind == "cosine":
        return F + (P - F) * (1 + math.cos(math.pi * t)) / 2
    if kind == "linear":
        return F + (P - F) * (1 - t)
    if kind == "step":
        return max(P * GAMMA ** (s // int(STEP_EPOCHS * E)), F)
    if kind == "multistep":
        return max(P * GAMMA ** sum(s >= m * E for m in MILESTONES), F)
    if kind == "exponential":
        return max(P * GAMMA ** ((s - w) / E), F)
    assert kind == "constant"
    return P


def schedule(kind: str, warmup: int = W) -> np.ndarray:
    return lr_schedule(kind, P, F, T, warmup, steps_per_epoch=E, gamma=GAMMA, step_epochs=STEP_EPOCHS,
                       milestones=MILESTONES)


@pytest.mark.parametrize("kind", list(SCHEDULES))
@pytest.mark.parametrize("warmup", [0, W])
def test_each_schedule_is_its_formula_at_every_step(kind, warmup):
    lrs = schedule(kind, warmup)
    assert lrs.shape == (T,) and lrs.dtype == np.float64
    for s in range(T):
        assert lrs[s] == pytest.approx(formula(kind, s, warmup), rel=1e-12, abs=1e-15), (kind, s)


def test_the_decays_reach_the_floor_and_the_steps_fall_where_configured():
    step, multi = schedule("step"), schedule("multistep")
    assert step[9] == P and step[10] == P / 2 and step[20] == P / 4 and step[40] == P / 16
    assert multi[14] == P and multi[15] == P / 2 and multi[34] == P / 2 and multi[35] == P / 4
    assert schedule("exponential")[-1] == F and schedule("constant")[W:].tolist() == [P] * (T - W)


def test_cosine_is_todays_warmup_cosine_bit_for_bit():
    np.testing.assert_array_equal(schedule("cosine"), warmup_cosine(P, F, T, W))


def test_a_warmup_as_long_as_the_run_never_decays():
    for kind in SCHEDULES:
        lrs = lr_schedule(kind, P, F, T, T + 3, steps_per_epoch=E, milestones=[1.0])
        np.testing.assert_allclose(lrs, P * np.arange(T) / T, rtol=1e-12)


def test_an_unknown_schedule_is_one_line():
    with pytest.raises(ConfigError, match="trainer.schedule=cosin is not one of cosine"):
        lr_schedule("cosin", P, F, T, W, steps_per_epoch=E)


def test_warmup_cosine_shape_and_ends():
    s = warmup_cosine(1.0, 0.1, total_steps=100, warmup_steps=10)
    assert s.shape == (100,) and s[0] == 0.0 and np.isclose(s[10], 1.0) and s.max() <= 1.0
    assert np.all(np.diff(s[:11]) > 0) and np.all(np.diff(s[10:]) <= 0) and s[-1] > 0.1
