"""SimSiam (Chen & He 2021): no gradient through the target branch; a predictor held at the peak lr.
The loss: tests/losses/test_noncontrastive.py; the views: tests/methods/test_byol.py::test_views."""
import pytest
import torch

from support import read_metrics
from support.methods import check_no_gradient_through_the_target_branch, one_step_params

pytestmark = pytest.mark.usefixtures("seeded")


def test_no_gradient_flows_through_the_target_branch():
    check_no_gradient_through_the_target_branch("simsiam")


# ----------------------------------------------------------------------------- through the trainer


def test_simsiam_fixed_predictor_lr_steps_during_warmup(tmp_path):
    """Step 1 of a warm-up has lr 0: only a predictor held at the peak lr moves."""
    from selfsup.data import open_split
    from selfsup.engine.build import build_method

    moved, cfg = one_step_params(tmp_path, "simsiam-digits", "method.predictor_fixed_lr=true")
    assert read_metrics(tmp_path)[0]["lr"] == 0.0
    start = build_method(cfg, open_split(cfg.data, "train", seed=cfg.trainer.seed)).state_dict()
    for key, w0 in start.items():
        if w0.is_floating_point() and "running_" not in key:
            assert torch.equal(moved[key], w0) != key.startswith("predictor."), key
