"""Fine-tuning protocol (selfsup.evaluation.finetune): learning, frozen blocks, layer-wise lr decay,
the from-scratch control, and ``selfsup eval --protocol finetune`` on a run and on an export."""
from __future__ import annotations

import json

import pytest
import torch

from selfsup.cli import main
from selfsup.config import FinetuneConfig
from selfsup.core.errors import ConfigError
from selfsup.data.datasets import make_dataset
from selfsup.evaluation.finetune import (
    Classifier,
    encoder_blocks,
    finetune,
    finetune_model,
    finetune_param_groups,
    fresh_copy,
)
from selfsup.evaluation.protocols import finetune_key, match_channels
from selfsup.models.backbones import create_backbone


def colour_split(n: int, seed: int, size: int = 8):
    """3 classes told apart by their dominant colour channel (survives crops and flips), plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = torch.randint(0, 110, (n, 3, size, size), generator=g)
    images[torch.arange(n), labels] += 140
    return make_dataset(images.to(torch.uint8), labels, ["r", "g", "b"])


@pytest.fixture(scope="module")
def data():
    return colour_split(240, 0), colour_split(90, 1)


def tiny_encoder(seed: int = 0):
    torch.manual_seed(seed)
    return create_backbone("resnet10t", small_stem=True, in_chans=3)


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_finetuning_learns_a_separable_task(data):
    train, test = data
    base = FinetuneConfig(epochs=4, batch_size=32, lr=0.2, warmup_epochs=0.5, hflip_p=0.5)
    untrained = finetune(tiny_encoder(), train, test, FinetuneConfig(epochs=1, batch_size=32, lr=0.0), progress=False)
    trained = finetune(tiny_encoder(), train, test, base, progress=False)
    assert untrained["top1"] < 0.6  # lr 0: the random head, about chance (1/3)
    assert trained["top1"] >= 0.9, trained
    assert trained["steps"] == 4 * (240 // 32) and trained["epochs"] == 4
    assert trained["top5"] == 1.0  # 3 classes: the true class is always among the top 5
    assert trained["settings"]["lr"] == 0.2 and trained["trained_blocks"] == trained["blocks"]


def test_frozen_first_blocks_stay_bit_identical(data):
    train, _ = data
    encoder = tiny_encoder()
    before = state(encoder)
    blocks = encoder_blocks(encoder)
    assert len(blocks) == 5  # resnet10t: stem + 4 stages
    model, info = finetune_model(encoder, train, FinetuneConfig(epochs=1, batch_size=32, lr=0.5, train_blocks=1),
                                 progress=False)
    assert info["trained_blocks"] == 1 and set(info["group_lrs"]) == {4, 5}  # last block + head
    after = state(model.encoder)
    last = ("layer4.",)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(k.startswith(last) for k in changed), changed[:5]
    # running statistics of the frozen batch norms included
    assert any(k.startswith("layer1.") and k.endswith("running_mean") for k in before)
    # the original encoder is untouched (fine-tuning trains a copy)
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())


def test_head_only_keeps_the_whole_encoder(data):
    train, _ = data
    encoder = tiny_encoder()
    model, info = finetune_model(encoder, train, FinetuneConfig(epochs=1, batch_size=32, train_blocks=0), progress=False)
    assert info["trained_blocks"] == 0 and set(info["group_lrs"]) == {5}
    assert all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(), model.encoder.state_dict().values()))


def test_layer_decay_gives_the_documented_per_group_lrs(data):
    train, _ = data
    decay, lr, batch = 0.5, 0.4, 32
    cfg = FinetuneConfig(epochs=2, max_steps=1, batch_size=batch, lr=lr, warmup_epochs=0.0, layer_decay=decay)
    _, info = finetune_model(tiny_encoder(), train, cfg, progress=False)
    peak = lr * batch / 256  # linear scaling from batch 256; no warmup: step 0 runs at the peak
    n = info["blocks"]
    assert set(info["group_lrs"]) == set(range(n + 1))
    for block, got in info["group_lrs"].items():
        assert got == pytest.approx(peak * decay ** (n - block)), block  # head (block n): peak
    groups = finetune_param_groups(Classifier(tiny_encoder(), 512, 3), cfg)
    # no weight decay on biases / norms, the configured one on weights
    assert all((g["weight_decay"] == 0.0) == all(p.ndim <= 1 for p in g["params"]) for g in groups)
    assert {g["block"]: g["lr_scale"] for g in groups}[0] == decay ** n


def test_blocks_cover_every_parameter_once():
    for encoder in (tiny_encoder(), create_backbone("vit_tiny_patch16_224", img_size=16, patch_size=4),
                    create_backbone("lstm", img_size=8, in_chans=1)):
        names = [n for block in encoder_blocks(encoder) for n, _ in block]
        assert sorted(names) == sorted(n for n, _ in encoder.named_parameters())


def test_from_scratch_control_is_a_seeded_random_encoder(data):
    train, test = data
    trained = tiny_encoder(seed=3)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)  # "pretrained" weights no random init would give
    a, b = fresh_copy(trained, 7), fresh_copy(trained, 7)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.conv1[0].weight, trained.conv1[0].weight)
    cfg = FinetuneConfig(epochs=1, max_steps=1, batch_size=32, from_scratch=True)
    model, _ = finetune_model(trained, train, cfg, progress=False)
    assert finetune_key(cfg) == "finetune_scratch"
    assert finetune_key(FinetuneConfig(train_blocks=2)) == "finetune_last2" and finetune_key(FinetuneConfig()) == "finetune"


def test_bad_settings_fail_with_the_key():
    with pytest.raises(ConfigError, match="eval.finetune.layer_decay"):
        finetune(tiny_encoder(), colour_split(30, 0), colour_split(9, 1), FinetuneConfig(layer_decay=1.5))
    with pytest.raises(ConfigError, match="eval.finetune.batch_size"):
        finetune(tiny_encoder(), colour_split(30, 0), colour_split(9, 1), FinetuneConfig(batch_size=64))


def test_grey_data_meet_a_colour_encoder():
    grey = make_dataset(torch.randint(0, 255, (4, 1, 8, 8), dtype=torch.uint8), torch.arange(4) % 2, ["a", "b"])
    colour = match_channels(grey, 3)
    assert colour.images.shape == (4, 3, 8, 8) and torch.equal(colour.images[:, 2], grey.images[:, 0])
    assert colour.mean == grey.mean * 3 and match_channels(grey, 1) is grey


def test_cli_finetune_on_a_run_and_on_an_export(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "supervised-digits", "backbone.name=resnet10t", "trainer.max_steps=2", "trainer.batch_size=64",
                 "eval.at_end=false", "run.plots=false", "run.tensorboard=false", f"run.dir={run}"]) == 0
    tiny = ["eval.finetune.epochs=1", "eval.finetune.max_steps=3", "eval.finetune.batch_size=64", "eval.finetune.hflip_p=0"]
    capsys.readouterr()
    assert main(["eval", "--protocol", "finetune", str(run), *tiny, "eval.finetune.train_blocks=1"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(printed) == {"finetune_last1"} and 0 <= printed["finetune_last1"]["top1"] <= 1
    assert json.loads((run / "eval.json").read_text())["finetune_last1"]["steps"] == 3
    export = tmp_path / "export"
    assert main(["export", str(run), "--out", str(export)]) == 0
    capsys.readouterr()
    assert main(["eval", "--protocol", "finetune", str(export), *tiny]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["finetune"]["trained_blocks"] == printed["finetune"]["blocks"]
    assert "finetune" in json.loads((export / "eval.json").read_text())
