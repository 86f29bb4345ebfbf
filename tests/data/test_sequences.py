"""Sequence data (selfsup.data.sequences): the [N, D, T, 1] layout, NaN past each length, statistics
over the valid steps, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from selfsup.core.errors import DataError
from selfsup.data import load_dataset
from support import write_sequences

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sequence_dataset_layout_stats_and_errors(tmp_path):
    write_sequences(tmp_path / "tr.npz", 40, 0)
    ds = load_dataset("sequence", "train", train_path=str(tmp_path / "tr.npz"))
    raw = np.load(tmp_path / "tr.npz")
    assert ds.images.shape == (40, 3, 9, 1) and ds.images.dtype == torch.float32 and ds.classes == ["neg", "pos"]
    first = int(raw["lengths"][0])
    torch.testing.assert_close(ds.images[0, :, :first, 0], torch.from_numpy(raw["x"][0, :first]).T)
    assert torch.isnan(ds.images[0, :, first:]).all()
    valid = np.concatenate([raw["x"][i, : raw["lengths"][i]] for i in range(40)])
    np.testing.assert_allclose(ds.mean, valid.mean(0), rtol=1e-5)
    np.testing.assert_allclose(ds.std, valid.std(0), rtol=1e-5)
    torch.save({"x": torch.randn(5, 4, 2), "y": torch.tensor([0, 1, 2, 0, 1])}, tmp_path / "s.pt")
    assert load_dataset("sequence", "val", val_path=str(tmp_path / "s.pt")).images.shape == (5, 2, 4, 1)
    with pytest.raises(DataError, match="data.val is not set"):
        load_dataset("sequence", "val", train_path=str(tmp_path / "tr.npz"))
    np.savez(tmp_path / "bad.npz", x=np.full((2, 3, 1), np.nan), y=np.array([0, 1]))
    with pytest.raises(DataError, match="NaN"):
        load_dataset("sequence", "train", train_path=str(tmp_path / "bad.npz"))
