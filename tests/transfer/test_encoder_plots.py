"""An encoder's pictures (selfsup.transfer.encoder_plots): `selfsup plot ENCODER --filters --features IMAGE`.

The arrays behind the PNGs are checked: one tile per first-layer filter, each min-max scaled from the
layer's own weights, laid out row by row; one map set per stage with the stage's stride and channels.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup import create_backbone, load_encoder
from selfsup.cli import main
from selfsup.data.imagefolder import decode_image
from selfsup.runs.export import export_encoder
from selfsup.transfer import feature_maps
from selfsup.transfer.encoder_plots import (
    filter_tiles,
    first_conv,
    read_image,
    stage_maps,
    tile_grid,
    vit_block_indices,
)

pytestmark = pytest.mark.usefixtures("one_thread")

VIT_ARGS = {"img_size": 32, "patch_size": 4, "depth": 6, "embed_dim": 48, "num_heads": 3}  # a very small ViT


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 256, (40, 52, 3), dtype=np.uint8)  # not square: resize + crop
    Image.fromarray(pixels).save(path)
    return path


def _reference_tiles(weight: torch.Tensor) -> np.ndarray:
    """Slow per-filter min-max scaling of ``[O, I, k, k]`` weights to ``[O, k, k, C]``."""
    tiles = []
    for w in weight.detach().float():
        w = w if w.shape[0] == 3 else w.mean(0, keepdim=True)
        tiles.append(((w - w.min()) / (w.max() - w.min())).permute(1, 2, 0).numpy())
    return np.stack(tiles)


def test_filter_tiles_are_the_first_convs_filters_one_per_output_channel(resnet_export):
    encoder = load_encoder(resnet_export)
    conv = first_conv(encoder)
    assert conv is encoder.conv1
    tiles = filter_tiles(encoder)
    assert tiles.shape == (conv.out_channels, 3, 3, 3) == (64, 3, 3, 3)
    np.testing.assert_allclose(tiles, _reference_tiles(conv.weight), atol=1e-6)
    assert np.allclose(tiles.reshape(64, -1).min(1), 0) and np.allclose(tiles.reshape(64, -1).max(1), 1)


def test_tile_grid_places_every_tile_row_by_row_and_fills_the_rest():
    tiles = np.random.default_rng(1).random((10, 3, 2, 1)).astype(np.float32)
    grid = tile_grid(tiles, pad=1, fill=-1.0)  # ceil(sqrt(10)) = 4 columns, 3 rows
    assert grid.shape == (3 * 4 - 1, 4 * 3 - 1, 1)
    cells = [grid[r * 4: r * 4 + 3, c * 3: c * 3 + 2] for r in range(3) for c in range(4)]
    for n, cell in enumerate(cells):
        if n < 10:
            np.testing.assert_array_equal(cell, tiles[n])
        else:
            assert (cell == -1).all()
    assert (grid == -1).sum() == grid.size - tiles.size  # gaps and the 2 empty cells, nothing else


def test_plot_cli_writes_the_filters_and_one_picture_per_stage(resnet_export, image, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "pics"
    assert main(["plot", str(resnet_export), "--filters", "--features", str(image), "--out", str(out),
                 "--channels", "4"]) == 0
    names = ["filters.png"] + [f"features_{i}.png" for i in range(4)]  # resnet18: layer1..layer4
    assert capsys.readouterr().out.split() == [str(out / name) for name in names]
    for name in names:
        with Image.open(out / name) as png:
            assert png.size[0] > 300
    encoder = load_encoder(resnet_export)
    maps = feature_maps(encoder)
    x = read_image(image, encoder)
    assert x.shape == (1, 3, 32, 32)
    stages = stage_maps(maps, x, channels=4)
    assert [s.stride for s in stages] == [1, 2, 4, 8] and [s.channels for s in stages] == [64, 128, 256, 512]
    with torch.no_grad():
        want = maps(x)
    for stage, t in zip(stages, want.values()):
        assert stage.tiles.shape == (4, 32 // stage.stride, 32 // stage.stride)
        np.testing.assert_allclose(stage.mean, t[0].abs().mean(0).numpy(), rtol=1e-5, atol=1e-6)
        flat = stage.tiles.reshape(4, -1)
        assert np.allclose(flat.max(1), 1) and np.allclose(flat.min(1), 0)


def test_a_vit_draws_its_patch_embedding_and_four_spaced_blocks(tmp_path, image, capsys):
    pytest.importorskip("matplotlib")
    torch.manual_seed(0)
    path = export_encoder(create_backbone("vit_tiny_patch16_224", **VIT_ARGS), tmp_path / "vit",
                          mean=[0.5] * 3, std=[0.25] * 3, input_size=(3, 32, 32))
    encoder = load_encoder(path)
    assert first_conv(encoder) is encoder.patch_embed.proj
    tiles = filter_tiles(encoder)
    assert tiles.shape == (48, 4, 4, 3)
    np.testing.assert_allclose(tiles, _reference_tiles(encoder.patch_embed.proj.weight), atol=1e-6)
    out = tmp_path / "pics"
    assert main(["plot", str(path), "--filters", "--features", str(image), "--out", str(out), "--channels", "4"]) == 0
    assert capsys.readouterr().out.split() == [str(out / n) for n in
                                               ["filters.png"] + [f"features_{i}.png" for i in range(4)]]
    assert vit_block_indices(encoder) == [0, 2, 3, 5]  # 6 blocks: 4 evenly spaced, the last included


def test_a_grey_encoder_gets_grey_tiles_and_a_one_channel_image(tmp_path, image):
    torch.manual_seed(0)
    path = export_encoder(create_backbone("resnet18", small_stem=True, in_chans=1), tmp_path / "grey",
                          mean=[0.5], std=[0.25], input_size=(1, 8, 8))
    encoder = load_encoder(path)
    assert filter_tiles(encoder).shape == (64, 3, 3, 1)
    x = read_image(image, encoder)
    assert x.shape == (1, 1, 8, 8)
    crop = torch.from_numpy(decode_image(str(image), 8)).float().div(255).mean(-1)  # as training decodes it
    torch.testing.assert_close(x[0, 0], (crop - 0.5) / 0.25)


@pytest.mark.parametrize("case, message", [
    ("missing", "encoder directory not found"),
    ("not_an_encoder", "has no config.json"),
    ("bad_image", "cannot read image"),
    ("missing_image", "image not found"),
    ("no_out", "say where the pictures go with --out DIR"),
    ("out_without_flags", "--out and --channels go with --filters / --features"),
])
def test_bad_input_is_a_one_line_error(resnet_export, tmp_path, capsys, case, message):
    pytest.importorskip("matplotlib")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("hello")
    (tmp_path / "text.png").write_text("not a picture")
    out = ["--out", str(tmp_path / "pics")]
    argv = {
        "missing": ["plot", str(tmp_path / "nowhere"), "--filters", *out],
        "not_an_encoder": ["plot", str(tmp_path / "folder"), "--filters", *out],
        "bad_image": ["plot", str(resnet_export), "--features", str(tmp_path / "text.png"), *out],
        "missing_image": ["plot", str(resnet_export), "--features", str(tmp_path / "nope.jpg"), *out],
        "no_out": ["plot", str(resnet_export), "--filters"],
        "out_without_flags": ["plot", str(tmp_path / "folder"), *out],
    }[case]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("selfsup: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "pics").exists()


def test_the_run_form_parses_as_before():
    from selfsup.cli import build_parser

    assert vars(build_parser().parse_args(["plot", "runs/x"])) == {"command": "plot", "run": "runs/x", "debug": False}
