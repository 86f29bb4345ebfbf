"""Sequence backbones (selfsup.models.sequence_backbones): LSTM, GRU and a transformer encoder over the
rows of [B, C, T, D] inputs; shapes, padding, packing, errors, and an export round trip."""
from __future__ import annotations

import json

import pytest
import torch

from selfsup.core.errors import ConfigError
from selfsup.models.backbones import create_backbone
from selfsup.runs.export import export_encoder, load_encoder

pytestmark = pytest.mark.usefixtures("one_thread")


SEQ_CASES = [
    ("lstm", {}),
    ("lstm", {"bidirectional": True, "num_layers": 2}),
    ("gru", {"bidirectional": True}),
    ("gru", {"tokens": "patches", "patch_size": 4}),
    ("seq_transformer", {"embed_dim": 32, "depth": 2, "num_heads": 2}),
    ("seq_transformer", {"embed_dim": 32, "depth": 1, "num_heads": 2, "positions": "learned",
                         "tokens": "patches", "patch_size": 4}),
]


def seq_model(name: str, args: dict, in_chans: int = 2, img_size=(12, 8)) -> torch.nn.Module:
    torch.manual_seed(0)
    args = {"hidden_size": 16} | args if name != "seq_transformer" else args
    return create_backbone(name, in_chans=in_chans, img_size=img_size, **args).eval()


@pytest.mark.parametrize("name,args", SEQ_CASES)
def test_sequence_backbone_shapes(name, args):
    model = seq_model(name, args)
    out = model(torch.randn(5, 2, 12, 8))
    assert out.shape == (5, model.num_features)
    expected = {"lstm": 16, "gru": 16, "seq_transformer": 32}[name] * (2 if args.get("bidirectional") else 1)
    assert model.num_features == expected
    with pytest.raises(ValueError, match="built for"):
        model(torch.randn(5, 3, 12, 8))  # wrong channel count


@pytest.mark.parametrize("name,args", [c for c in SEQ_CASES if c[1].get("tokens") != "patches"])
def test_padding_never_changes_the_output(name, args):
    """A batch of sequences padded to T (NaN rows, or garbage + explicit lengths) gives each
    sequence the output it has alone at its own length."""
    model = seq_model(name, args, in_chans=1, img_size=(10, 3))  # sequences: [B, 1, T=10, D=3] rows
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 10, 3, generator=g)
    lengths = torch.tensor([10, 3, 7, 1])
    padded = x.clone()
    for i, n in enumerate(lengths.tolist()):
        padded[i, :, n:] = float("nan")
    garbage = x.clone()  # the values past each length are random, made irrelevant by ``lengths``
    with torch.no_grad():
        alone = torch.cat([model(x[i : i + 1, :, :n]) for i, n in enumerate(lengths.tolist())])
        torch.testing.assert_close(model(padded), alone, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(garbage, lengths), alone, atol=1e-5, rtol=1e-5)


def test_packed_equals_unpacked_for_equal_lengths():
    model = seq_model("lstm", {"bidirectional": True, "num_layers": 2})
    x = torch.randn(3, 2, 12, 8)
    with torch.no_grad():
        packed = model(x)  # bidirectional: always packed
        _, (h_n, _) = model.rnn(x.permute(0, 2, 1, 3).reshape(3, 12, 16))  # plain run of the same nn.LSTM
    torch.testing.assert_close(packed, torch.cat([h_n[-2], h_n[-1]], dim=1), atol=1e-6, rtol=1e-6)


def test_sequence_backbone_errors_are_config_errors():
    with pytest.raises(ConfigError, match="img_size"):
        create_backbone("lstm")
    with pytest.raises(ConfigError, match="small_stem"):
        create_backbone("gru", img_size=8, small_stem=True)
    with pytest.raises(ConfigError, match="bad backbone arguments"):
        create_backbone("seq_transformer", img_size=8, tokens="patches", patch_size=3)
    with pytest.raises(ConfigError, match="lstm"):
        create_backbone("lstn")


@pytest.mark.parametrize("name,args", [SEQ_CASES[1], SEQ_CASES[5]])
def test_sequence_backbone_export_round_trip(name, args, tmp_path):
    model = seq_model(name, args)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = export_encoder(model, tmp_path / "enc", mean=(0.1, 0.2), std=(0.9, 1.1), input_size=(2, 12, 8), method="supervised")
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == name and config["num_features"] == model.num_features
    loaded = load_encoder(out)
    assert loaded.selfsup_spec == model.selfsup_spec | {"model_args": json.loads(json.dumps(model.selfsup_spec["model_args"]))}
    x = torch.randn(4, 2, 12, 8)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
