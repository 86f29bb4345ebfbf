"""Float images in [0, 1] (torchvision's ToTensor convention) are augmented exactly as their uint8
originals, and float images in any other range are refused (issue 16, point 7): the view maker
used to return them un-augmented, every view the same tensor."""
import pytest
import torch

from selfsup.core.errors import DataError
from selfsup.data.augment import AugmentSpec, ViewMaker

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def _images(batch: int = 16, size: int = 16) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def _maker() -> ViewMaker:
    return ViewMaker([(AugmentSpec.simclr(12, strength=1.0), 2)], MEAN, STD)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_float_images_in_unit_range_give_the_views_of_their_uint8_originals(dtype):
    images = _images()
    from_uint8 = _maker()(images, torch.Generator().manual_seed(0))
    from_float = _maker()((images.double() / 255).to(dtype), torch.Generator().manual_seed(0))
    atol = 1e-2 if dtype == torch.float16 else 1e-4
    for a, b in zip(from_uint8, from_float):
        assert b.dtype == torch.float32 and b.shape == (16, 3, 12, 12)
        torch.testing.assert_close(b, a, atol=atol, rtol=0)


def test_the_two_views_of_float_images_differ_and_their_statistics_are_sane():
    images = _images(64).float() / 255
    v1, v2 = _maker()(images, torch.Generator().manual_seed(0))
    assert not torch.allclose(v1, v2)  # augmented: not one tensor twice
    assert (v1 - v2).abs().mean() > 0.1
    for v in (v1, v2):
        pixels = v * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)  # undo the normalisation
        assert torch.isfinite(v).all()
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5  # still images in [0, 1]
        assert 0.2 < pixels.mean() < 0.8 and pixels.std() > 0.1


@pytest.mark.parametrize("bad, hint", [
    (lambda x: x.float(), "divide by 255"),  # uint8-range floats
    (lambda x: (x.float() / 255 - 0.5) / 0.25, r"\[0, 1\]"),  # already normalised
    (lambda x: torch.where(x > 128, float("nan"), x.float() / 255), "nan"),
])
def test_float_images_outside_the_unit_range_are_refused_in_one_line(bad, hint):
    with pytest.raises(DataError, match=hint) as err:
        _maker()(bad(_images()), torch.Generator().manual_seed(0))
    assert "\n" not in str(err.value)


def test_non_image_float_data_are_only_normalised_when_declared_so():
    x = torch.randn(4, 3, 9, 1) * 5
    views = ViewMaker([(AugmentSpec(size=1), 2)], MEAN, STD, is_image=False)(x, torch.Generator())
    assert len(views) == 2 and torch.equal(views[0], views[1])
    with pytest.raises(ValueError, match="float32"):
        ViewMaker([(AugmentSpec(size=1), 1)], MEAN, STD, is_image=False)(_images(), torch.Generator())
