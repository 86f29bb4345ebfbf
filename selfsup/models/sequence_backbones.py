"""Sequence backbones: LSTM / GRU and a transformer encoder that read an image as a sequence.

An input ``[B, C, H, W]`` becomes tokens ``[B, T, F]``:

- ``tokens="rows"``: one step per pixel row, ``T = H``, ``F = C * W`` (row ``t`` holds every
  channel of pixel row ``t``, channel-major). A sequence dataset (``data.name=sequence``) stores
  ``x [N, T, D]`` as ``[N, D, T, 1]``, so its rows are exactly its ``T`` steps of ``D`` features.
- ``tokens="patches"``: non-overlapping ``p x p`` patches in row-major order,
  ``T = (H / p) * (W / p)``, ``F = C * p * p`` (as a ViT's patch embedding sees them).

Variable lengths: a step whose features are all NaN is padding, and padding must come after the
valid steps (``data.name=sequence`` pads that way); ``forward(x, lengths)`` also takes the lengths
explicitly. RNNs pack bidirectional batches (``pack_padded_sequence``; this copies the lengths to
the host) and read a unidirectional RNN's output at each sequence's own last step; the
transformer masks padded keys. Either way padding never changes the output.

References: LSTM, Hochreiter & Schmidhuber 1997; GRU, Cho et al. 2014 (arXiv:1406.1078);
row-by-row image RNNs, e.g. Le et al. 2015 (arXiv:1504.00941); transformer encoder and sinusoidal
positions, Vaswani et al. 2017 (arXiv:1706.03762); class token and patches, Devlin et al. 2019
(arXiv:1810.04805) and Dosovitskiy et al. 2021 (arXiv:2010.11929).
"""
from __future__ import annotations

import math
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from selfsup.core.registry import SEQUENCE_BACKBONES

__all__ = ["SEQUENCE_BACKBONES", "RNNEncoder", "SequenceTransformer", "image_to_tokens", "sinusoidal_positions"]

Tokens = Literal["rows", "patches"]



def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``32`` -> ``(32, 32)``; ``[T, 1]`` -> ``(T, 1)``."""
    if isinstance(size, int):
        return size, size
    h, w = (int(v) for v in size)
    return h, w


def image_to_tokens(x: Tensor, tokens: Tokens, patch_size: int) -> Tensor:
    """Read ``x`` [B, C, H, W] as a sequence: rows -> [B, H, C*W]; patches -> [B, (H/p)*(W/p), C*p*p]."""
    b, c, h, w = x.shape
    if tokens == "rows":
        return x.permute(0, 2, 1, 3).reshape(b, h, c * w)
    return F.unfold(x, kernel_size=patch_size, stride=patch_size).transpose(1, 2)


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    """Vaswani et al. 2017, sec. 3.5: PE[t, 2i] = sin(t / 10000^(2i/dim)), PE[t, 2i+1] = cos(...). [length, dim]."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)[:, : dim // 2]
    return table


class SequenceBackbone(nn.Module):
    """Shared input handling: geometry, tokenisation, padding and lengths.

    Args:
        in_chans: channels ``C`` of the input.
        img_size: ``H`` or ``(H, W)`` of the input the model is built for (sets ``F`` and, for
            the transformer, the number of positions; RNNs also accept any other ``H``).
        tokens: ``"rows"`` or ``"patches"``.
        patch_size: patch side ``p`` for ``tokens="patches"``.
    """

    def __init__(self, in_chans: int, img_size: int | tuple[int, int], tokens: Tokens, patch_size: int):
        super().__init__()
        if tokens not in ("rows", "patches"):
            raise ValueError(f"tokens must be 'rows' or 'patches', got {tokens!r}")
        self.in_chans, self.img_size, self.tokens, self.patch_size = in_chans, _pair(img_size), tokens, patch_size
        h, w = self.img_size
        if tokens == "patches" and (patch_size < 1 or h % patch_size or w % patch_size):
            raise ValueError(f"patch_size={patch_size} must divide img_size={self.img_size}")
        self.seq_len = h if tokens == "rows" else (h // patch_size) * (w // patch_size)
        self.token_dim = in_chans * (w if tokens == "rows" else patch_size * patch_size)
        self.num_classes = 0  # headless, as timm's create_model(num_classes=0)

    def tokenize(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x [B, C, H, W] -> (tokens [B, T, F] with padding zeroed, lengths int64 [B] in [1, T]).

        ``lengths=None``: each sample's valid steps are those not entirely NaN.
        """
        _, c, h, w = x.shape
        if c != self.in_chans or (self.tokens == "rows" and w != self.img_size[1]):
            raise ValueError(f"{type(self).__name__} built for [B, {self.in_chans}, H, {self.img_size[1]}] "
                             f"inputs ({self.tokens}), got {list(x.shape)}")
        if self.tokens == "patches" and (h % self.patch_size or w % self.patch_size):
            raise ValueError(f"input {h}x{w} is not divisible into {self.patch_size}-px patches")
        tokens = image_to_tokens(x, self.tokens, self.patch_size)
        if lengths is None:
            lengths = (~torch.isnan(tokens).all(dim=-1)).sum(dim=1)
        lengths = lengths.to(device=x.device, dtype=torch.int64).clamp(1, tokens.shape[1])
        return torch.nan_to_num(tokens, nan=0.0), lengths


class RNNEncoder(SequenceBackbone):
    """An LSTM or GRU (``torch.nn``, cuDNN on GPUs) over the token sequence -> [B, num_features].

    Features: the top layer's hidden state after each sequence's last valid step; bidirectional
    RNNs concatenate the backward direction's state after reading back to step 0.
    ``num_features = hidden_size * (2 if bidirectional else 1)``.
    """

    def __init__(self, cell: Literal["lstm", "gru"], in_chans: int = 3, img_size: int | tuple[int, int] = 32,
                 tokens: Tokens = "rows", patch_size: int = 4, hidden_size: int = 128, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0):
        super().__init__(in_chans, img_size, tokens, patch_size)
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn(self.token_dim, hidden_size, num_layers, batch_first=True,
                       dropout=dropout if num_layers > 1 else 0.0, bidirectional=bidirectional)
        self.num_features = hidden_size * (2 if bidirectional else 1)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """x [B, C, H, W] (normalised; NaN rows = padding) -> features [B, num_features]."""
        tokens, lengths = self.tokenize(x, lengths)
        if not self.rnn.bidirectional:  # causal: the output at step len-1 never sees the padding
            out, _ = self.rnn(tokens)  # [B, T, hidden]
            return out[torch.arange(out.shape[0], device=out.device), lengths - 1]
        packed = pack_padded_sequence(tokens, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, state = self.rnn(packed)
        h_n = state[0] if isinstance(state, tuple) else state  # [layers * 2, B, hidden], batch order restored
        return torch.cat([h_n[-2], h_n[-1]], dim=1)


class SequenceTransformer(SequenceBackbone):
    """Linear token embedding + class token + positions -> ``nn.TransformerEncoder`` (pre-norm) -> class token.

    ``positions``: ``"sinusoidal"`` (fixed, Vaswani et al. 2017) or ``"learned"``; either covers the
    class token and at most ``seq_len`` tokens. ``num_features = embed_dim``.
    """

    def __init__(self, in_chans: int = 3, img_size: int | tuple[int, int] = 32, tokens: Tokens = "rows",
                 patch_size: int = 4, embed_dim: int = 128, depth: int = 4, num_heads: int = 4,
                 mlp_ratio: float = 4.0, drop_rate: float = 0.0,
                 positions: Literal["sinusoidal", "learned"] = "sinusoidal"):
        super().__init__(in_chans, img_size, tokens, patch_size)
        if positions not in ("sinusoidal", "learned"):
            raise ValueError(f"positions must be 'sinusoidal' or 'learned', got {positions!r}")
        self.embed = nn.Linear(self.token_dim, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if positions == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, self.seq_len + 1, embed_dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        else:  # not persistent: rebuilt from the shape, never exported
            self.register_buffer("pos_embed", sinusoidal_positions(self.seq_len + 1, embed_dim)[None], persistent=False)
        layer = nn.TransformerEncoderLayer(embed_dim, num_heads, int(mlp_ratio * embed_dim), drop_rate,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(embed_dim), enable_nested_tensor=False)
        self.num_features = embed_dim

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """x [B, C, H, W] (normalised; NaN rows = padding) -> class-token features [B, embed_dim]."""
        tokens, lengths = self.tokenize(x, lengths)
        b, t, _ = tokens.shape
        if t > self.seq_len:
            raise ValueError(f"{t} tokens, but positions exist for at most {self.seq_len} (img_size={self.img_size})")
        h = torch.cat([self.cls_token.expand(b, -1, -1), self.embed(tokens)], dim=1) + self.pos_embed[:, : t + 1]
        # Position 0 is the class token; token i sits at position i + 1 and is padding when i >= length.
        padding = torch.arange(t + 1, device=x.device)[None, :] > lengths[:, None]  # [B, T + 1], True = ignore
        return self.encoder(h, src_key_padding_mask=padding)[:, 0]


SEQUENCE_BACKBONES.register("lstm")(partial(RNNEncoder, "lstm"))
SEQUENCE_BACKBONES.register("gru")(partial(RNNEncoder, "gru"))
SEQUENCE_BACKBONES.register("seq_transformer")(SequenceTransformer)
