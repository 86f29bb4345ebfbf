"""A folder of images without class sub-folders is a split of unlabelled images (issue 16, point 4): every
label -1, no classes, in memory and streamed alike, cached like any split; an empty one is still an error."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.config import DataConfig
from selfsup.core.errors import DataError
from selfsup.data import open_split


def _flat(root: Path, n: int = 10) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8, 3), 20 * i, np.uint8)).save(root / f"{i}.{'png' if i % 2 else 'jpg'}")
    (root / ".hidden").mkdir()  # hidden folders are no classes
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.mark.parametrize("streaming", ["never", "always"])
def test_a_flat_folder_is_an_unlabelled_split(tmp_path, streaming):
    data = DataConfig(name="imagefolder", train=str(_flat(tmp_path / "flat")), cache_dir=str(tmp_path / "cache"),
                      streaming=streaming, workers=0)
    split = open_split(data, "train")
    assert len(split) == 10 and split.classes == [] and torch.equal(split.labels, torch.full((10,), -1))
    images, labels = split.batch(torch.arange(3))
    assert images.shape == (3, 3, 8, 8) and labels.tolist() == [-1, -1, -1]
    if streaming == "never":  # cached: a second load reads the same split back
        again = open_split(data, "train")
        assert again.classes == [] and torch.equal(again.labels, split.labels)


def test_a_folder_with_neither_class_folders_nor_images_is_an_error(tmp_path):
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "readme.md").write_text("#")
    with pytest.raises(DataError, match="holds no images: it has no class sub-folders and no"):
        open_split(DataConfig(name="imagefolder", train=str(tmp_path / "nothing"), cache_dir=str(tmp_path / "c")),
                   "train")
