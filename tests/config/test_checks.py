"""Bad configs: one line naming the problem, exit code 2, no traceback (``--debug`` shows it)."""
import pytest

from selfsup.cli import main
from selfsup.config import load_config
from selfsup.core.errors import ConfigError
from selfsup.runs.train import train
from support import TINY, tiny_config


@pytest.mark.parametrize("override,message", [
    ("trainer.batch_size=0", "config key 'trainer.batch_size' must be >= 1, got 0"),
    ("trainer.batch_size=-32", "config key 'trainer.batch_size' must be >= 1, got -32"),
    ("trainer.epochs=0", "'trainer.epochs' must be >= 1"),
    ("trainer.max_steps=0", "'trainer.max_steps' must be >= 1"),
    ("trainer.grad_accum=0", "'trainer.grad_accum' must be >= 1"),
    ("trainer.checkpoint_every=-1", "'trainer.checkpoint_every' must be >= 1"),
    ("trainer.log_every=0", "'trainer.log_every' must be >= 1"),
    ("data.image_size=0", "'data.image_size' must be >= 1"),
    ("data.num_samples=-5", "'data.num_samples' must be >= 1"),
    ("eval.batch_size=0", "'eval.batch_size' must be >= 1"),
    ("trainer.lr=-0.1", "'trainer.lr' must be > 0, got -0.1"),
    ("trainer.lr=.nan", "'trainer.lr' must be a finite number, got nan"),
    ("trainer.weight_decay=-1e-4", "'trainer.weight_decay' must be >= 0"),
    ("trainer.warmup_epochs=-1", "'trainer.warmup_epochs' must be >= 0"),
    ("trainer.keep_checkpoints=-1", "'trainer.keep_checkpoints' must be >= 0"),
    ("trainer.min_lr=2", "'trainer.min_lr' must be in [0, 1] (a fraction of the peak learning rate), got 2.0"),
    ("trainer.momentum=1.5", "'trainer.momentum' must be in [0, 1)"),
    ("trainer.grad_clip=0", "'trainer.grad_clip' must be > 0 (or null for no clipping)"),
    ("eval.knn_k=[20, 0]", "'eval.knn_k' must be a non-empty list of integers >= 1, got [20, 0]"),
    ("eval.knn_temperature=0", "'eval.knn_temperature' must be > 0"),
    ("method.temperature=0", "'method.temperature' must be > 0, got 0.0"),
    ("method.proj_dim=-8", "'method.proj_dim' must be >= 1"),
    ("method.crop_scale=[0.9, 0.2]", "'method.crop_scale' must be [low, high] with 0 < low <= high <= 1, got [0.9, 0.2]"),
    ("trainer.nonfinite=ignore", "'trainer.nonfinite' must be one of stop | skip, got 'ignore'"),
    ("data.on_bad_file=warn", "'data.on_bad_file' must be one of skip | error, got 'warn'"),
])
def test_bad_value_names_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value) and "\n" not in str(info.value)


def run_cli(capsys, *args):
    code = main(["train", *args])
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("args,message", [
    (["trainer.batch_size=0"], "config key 'trainer.batch_size' must be >= 1, got 0"),
    ([*TINY, "trainer.batch_size=1"], "trainer.batch_size=1 gives 1 images per process and step; simclr needs at least 2"),
    ([*TINY, "trainer.batch_size=100"], "trainer.batch_size=100 is larger than the dataset (64 images)"),
    ([*TINY, "trainer.grad_accum=3"], "trainer.batch_size=16 is not divisible by processes x trainer.grad_accum = 1 x 3"),
    (["dino-digits", *(a for a in TINY if not a.startswith("method.")), "method.local_crop_size=24"],
     "method.local_crop_size=24 is larger than the 16x16 images (use at most 16, or raise data.image_size)"),
    (["data.name=imagefolder", "data.train=/no/such/train", "data.val=/no/such/val"],
     "data.train=/no/such/train does not exist"),
    (["data.name=imagefolder", "data.train=."], "data.val is not set: the evaluation at the end needs data.val=PATH"),
    ([*TINY, "resume=/no/such/step-00000003.pt"], "resume=/no/such/step-00000003.pt is no file"),
])
def test_bad_config_through_the_cli_is_one_line_exit_2(args, message, tmp_path, capsys):
    code, err = run_cli(capsys, *args, f"run.dir={tmp_path / 'run'}")
    assert code == 2, err
    assert err.strip() == f"selfsup: error: {message}" or (err.startswith("selfsup: error: ") and message in err
                                                             and len(err.strip().splitlines()) == 1), err
    assert not (tmp_path / "run").exists()  # refused before the run directory was written


def test_debug_shows_the_traceback():
    with pytest.raises(ConfigError, match="trainer.batch_size"):
        main(["--debug", "train", "trainer.batch_size=0"])


def test_batch_larger_than_dataset_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="larger than the dataset"):
        train(tiny_config(tmp_path, "trainer.batch_size=128"))


def test_lars_trust_coefficient_must_be_positive():
    with pytest.raises(ConfigError, match="lars_trust_coefficient"):
        load_config("simclr-digits", ["trainer.lars_trust_coefficient=0"])
