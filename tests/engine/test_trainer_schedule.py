"""The trainer's optimizer and learning rate per step (issue 20, item 3): trainer.optimizer builds timm's
optimizer over our groups, and every optimizer step runs at trainer.schedule's precomputed rate (lr rules
included). The schedules' formulas: tests/core/test_schedules.py; the optimizers' rules: test_optim.py."""
from __future__ import annotations

import torch

from selfsup.data import open_split
from selfsup.engine.build import build_method, make_accelerator
from selfsup.engine.trainer import Trainer
from support import tiny_config


def test_each_step_runs_at_the_schedules_rate(tmp_path):
    # 64 images, batch 16: 4 steps an epoch, 8 in all; peak 0.5 x 16 / 256; x 0.5 at epochs 0.5 and 1.5 (steps 2, 6)
    cfg = tiny_config(tmp_path, "trainer.optimizer=rmsprop", "eval.online=false", "trainer.schedule=multistep", "trainer.lr_gamma=0.5",
                      "trainer.lr_milestones=[0.5, 1.5]", "trainer.warmup_epochs=0.25", "trainer.weight_decay=0.01")
    data = open_split(cfg.data, "train", seed=0)
    trainer = Trainer(cfg, build_method(cfg, data), data, tmp_path, make_accelerator(cfg))
    assert type(trainer.optimizer.optimizer) is torch.optim.RMSprop
    peak = 0.5 * 16 / 256
    assert trainer.schedules["lr"].tolist() == [0.0, peak, peak / 2, peak / 2, peak / 2, peak / 2, peak / 4, peak / 4]
    seen = []
    for step in range(4):
        trainer.train_step(step)
        seen.append([(g["lr"], g["weight_decay"]) for g in trainer.optimizer.param_groups])
    lrs = trainer.schedules["lr"][:4]
    assert seen == [[(lr, 0.01), (lr, 0.0)] for lr in lrs]  # weights decayed, biases and norms not
