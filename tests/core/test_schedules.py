"""Per-step schedules (selfsup.core.schedules)."""
import numpy as np

from selfsup.core.schedules import warmup_cosine


def test_warmup_cosine_shape_and_ends():
    s = warmup_cosine(1.0, 0.1, total_steps=100, warmup_steps=10)
    assert s.shape == (100,) and s[0] == 0.0 and np.isclose(s[10], 1.0) and s.max() <= 1.0
    assert np.all(np.diff(s[:11]) > 0) and np.all(np.diff(s[10:]) <= 0) and s[-1] > 0.1
