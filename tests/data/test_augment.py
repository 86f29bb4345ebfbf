"""Tests for selfsup.data.augment: each op against torchvision on single images with fixed
parameters, random parameters within their ranges, reproducibility, and ViewMaker shapes."""

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from selfsup.core.errors import ConfigError
from selfsup.data import augment as A
from selfsup.data.augment import ViewMaker

DEVICES = ["cpu"] + ([pytest.param("cuda", marks=pytest.mark.cuda)] if torch.cuda.is_available() else [])


def _images(b=4, c=3, h=12, w=16, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, w, generator=g).to(device)


def _gen(seed, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


# ----------------------------------------------------------------------------- geometry

@pytest.mark.parametrize("box", [(2, 3, 5, 7), (0, 0, 12, 16), (7, 9, 5, 7)])
def test_resized_crop_upscaling_matches_torchvision(box):
    x = _images()
    top, left, h, w = box
    ours = A.resized_crop(x, torch.tensor([box] * 4, dtype=torch.float32), 20)
    ref = TF.resized_crop(x, top, left, h, w, [20, 20], InterpolationMode.BILINEAR,
                          antialias=True)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_resized_crop_downscaling_matches_torchvision_without_antialias():
    x = _images(h=30, w=30)
    ours = A.resized_crop(x, torch.tensor([[3.0, 1.0, 25.0, 22.0]] * 4), 9)
    ref = TF.resized_crop(x, 3, 1, 25, 22, [9, 9], InterpolationMode.BILINEAR, antialias=False)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_resized_crop_per_sample_boxes_flip_and_multiple_crops():
    x = _images(b=2)
    boxes = torch.tensor([[0, 0, 6, 6], [1, 2, 9, 5], [3, 4, 7, 8], [5, 0, 7, 9]],
                         dtype=torch.float32)  # 2 crops per image: rows v*B + b
    flip = torch.tensor([False, True, True, False])
    out = A.resized_crop(x, boxes, 10, flip=flip)
    assert out.shape == (4, 3, 10, 10)
    for row in range(4):
        t, l, h, w = (int(v) for v in boxes[row])
        ref = TF.resized_crop(x[row % 2], t, l, h, w, [10, 10], antialias=True)
        ref = TF.horizontal_flip(ref) if flip[row] else ref
        torch.testing.assert_close(out[row], ref, atol=1e-5, rtol=0)


def test_hflip_mask():
    x = _images()
    mask = torch.tensor([True, False, True, False])
    out = A.hflip(x, mask)
    torch.testing.assert_close(out[0], TF.horizontal_flip(x[0]))
    torch.testing.assert_close(out[1], x[1])


@pytest.mark.parametrize("h,w,scale,ratio", [
    (32, 32, (0.08, 1.0), (3 / 4, 4 / 3)), (20, 50, (0.05, 0.4), (3 / 4, 4 / 3)),
    (40, 24, (0.3, 1.0), (0.5, 2.0))])
def test_crop_boxes_inside_image_and_within_bounds(h, w, scale, ratio):
    boxes = A.sample_crop_boxes(2000, h, w, scale, ratio, _gen(1))
    top, left, bh, bw = boxes.unbind(1)
    assert boxes.shape == (2000, 4) and torch.equal(boxes, boxes.round())
    assert (top >= 0).all() and (left >= 0).all() and (bh >= 1).all() and (bw >= 1).all()
    assert (top + bh <= h).all() and (left + bw <= w).all()
    # sides are rounded to whole pixels: bound the unrounded sides (+-0.5) instead
    eps = 1e-4
    assert ((bw - 0.5) * (bh - 0.5) <= scale[1] * h * w + eps).all()
    assert ((bw + 0.5) * (bh + 0.5) >= scale[0] * h * w - eps).all()
    assert ((bw + 0.5) / (bh - 0.5) >= ratio[0] - eps).all()
    assert ((bw - 0.5) / (bh + 0.5) <= ratio[1] + eps).all()
    area = bh * bw / (h * w)
    assert top.unique().numel() > 3 and area.std() > 0.05  # really random


def test_crop_boxes_distribution_matches_torchvision_random_resized_crop():
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    img, scale, ratio = torch.zeros(1, 20, 50), (0.05, 0.6), (3 / 4, 4 / 3)
    ref = torch.tensor([RandomResizedCrop.get_params(img, list(scale), list(ratio))
                        for _ in range(3000)], dtype=torch.float32)
    ours = A.sample_crop_boxes(3000, 20, 50, scale, ratio, _gen(2))
    for boxes in (ref, ours):
        boxes[:, 0] += boxes[:, 2] / 2  # centres
        boxes[:, 1] += boxes[:, 3] / 2
    # mean centre, side lengths and area agree within sampling noise (4 standard errors)
    noise = 4 * ref.std(0) * (2 / 3000) ** 0.5
    assert ((ours.mean(0) - ref.mean(0)).abs() < noise).all()
    assert ((ours.std(0) - ref.std(0)).abs() < 0.1 * ref.std(0)).all()
    area = lambda b: (b[:, 2] * b[:, 3]).mean() / 1000  # noqa: E731
    assert abs(area(ours) - area(ref)) < 0.02


def test_crop_boxes_fallback_is_central_crop():
    # a scale that can never fit forces torchvision's central fallback, clipped to the ratio
    boxes = A.sample_crop_boxes(5, 10, 40, (1.0, 1.0), (1.0, 1.0), _gen(0))
    assert torch.equal(boxes, torch.tensor([[0.0, 15.0, 10.0, 10.0]] * 5))
    boxes = A.sample_crop_boxes(3, 20, 20, (1.0, 1.0), (1.0, 1.0), _gen(0))
    assert torch.equal(boxes, torch.tensor([[0.0, 0.0, 20.0, 20.0]] * 3))


# ----------------------------------------------------------------------------- colour

@pytest.mark.parametrize("name,factors", [
    ("brightness", [0.6, 1.0, 1.4, 1.2]), ("contrast", [0.6, 1.0, 1.4, 0.0]),
    ("saturation", [0.6, 1.0, 1.4, 0.0]), ("hue", [-0.1, 0.0, 0.1, 0.45])])
def test_color_ops_match_torchvision(name, factors):
    x = _images()
    ours = getattr(A, f"adjust_{name}")(x, torch.tensor(factors))
    ref_fn = getattr(TF, f"adjust_{name}")
    ref = torch.stack([ref_fn(x[i], f) for i, f in enumerate(factors)])
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=0)


def test_hue_with_ties_and_greys_matches_torchvision():
    x = (_images(b=6) * 4).round() / 4  # few levels: many tied channels and grey pixels
    shifts = [-0.5, -0.3, 0.0, 0.05, 0.25, 0.5]
    ref = torch.stack([TF.adjust_hue(x[i], s) for i, s in enumerate(shifts)])
    torch.testing.assert_close(A.adjust_hue(x, torch.tensor(shifts)), ref, atol=2e-5, rtol=0)


def test_grayscale_matches_torchvision_and_one_channel_passes():
    x = _images()
    mask = torch.tensor([True, True, False, True])
    out = A.grayscale(x, mask)
    torch.testing.assert_close(out[0], TF.rgb_to_grayscale(x[0], num_output_channels=3),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(out[2], x[2])
    one = _images(c=1)
    assert torch.equal(A.grayscale(one), one)
    assert torch.equal(A.adjust_saturation(one, 0.3), one)
    assert torch.equal(A.adjust_hue(one, 0.2), one)


def test_solarize_matches_torchvision():
    x = _images()
    torch.testing.assert_close(A.solarize(x, 0.5), TF.solarize(x, 0.5))
    mask = torch.tensor([False, True, False, True])
    out = A.solarize(x, 0.3, mask)
    torch.testing.assert_close(out[1], TF.solarize(x[1], 0.3))
    torch.testing.assert_close(out[0], x[0])


@pytest.mark.parametrize("kernel", [3, 5])
def test_gaussian_blur_per_sample_sigma_matches_torchvision(kernel):
    x = _images(h=11, w=13)
    sigmas = [0.1, 0.7, 1.5, 2.0]
    ours = A.gaussian_blur(x, torch.tensor(sigmas), kernel_size=kernel)
    ref = torch.stack([TF.gaussian_blur(x[i], [kernel, kernel], [s, s])
                       for i, s in enumerate(sigmas)])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_blur_kernel_size_is_ten_percent_and_odd():
    assert [A.blur_kernel_size(s) for s in (8, 32, 64, 96, 224)] == [1, 3, 7, 9, 23]


def test_normalize():
    x = _images()
    torch.testing.assert_close(A.normalize(x, [0.4, 0.5, 0.6], [0.2, 0.3, 0.25]),
                               TF.normalize(x, [0.4, 0.5, 0.6], [0.2, 0.3, 0.25]))


def test_jitter_params_within_ranges():
    p = A.sample_jitter_params(4000, 0.4, 0.3, 0.9, 0.1, 0.8, _gen(3))
    for name, lo, hi in [("brightness", 0.6, 1.4), ("contrast", 0.7, 1.3),
                         ("saturation", 0.1, 1.9), ("hue", -0.1, 0.1)]:
        v = p[name]
        assert v.min() >= lo and v.max() <= hi and v.max() - v.min() > 0.9 * (hi - lo), name
    assert abs(p["apply"].float().mean().item() - 0.8) < 0.05
    assert "hue" not in A.sample_jitter_params(4, 0.4, 0.4, 0.4, 0.0, 0.8, _gen(3))


def test_color_jitter_applies_with_probability_and_in_order():
    x = _images(b=64)
    assert torch.equal(A.color_jitter(x, 0.4, 0.4, 0.4, 0.1, 0.0, _gen(0)), x)
    # brightness only, p=1: every sample scaled by its own factor in [0.5, 1.5]
    out = A.color_jitter(x, 0.5, 0.0, 0.0, 0.0, 1.0, _gen(0))
    ratio = (out / x)[out < 1].view(-1)  # unclamped pixels only
    per_sample = torch.stack([(out[i] / x[i])[out[i] < 1].median() for i in range(64)])
    assert ratio.min() >= 0.5 - 1e-5 and ratio.max() <= 1.5 + 1e-5 and per_sample.std() > 0.1
    # a fixed order equals composing the fixed-parameter ops
    params = A.sample_jitter_params(64, 0.4, 0.4, 0.4, 0.1, 1.0, _gen(5))
    ref = A.adjust_brightness(A.adjust_hue(x, params["hue"]), params["brightness"])
    ref = A.adjust_saturation(A.adjust_contrast(ref, params["contrast"]), params["saturation"])
    torch.testing.assert_close(A.apply_color_jitter(x, params, (3, 0, 1, 2)), ref)


# ----------------------------------------------------------------------------- specs, views

def test_spec_presets_and_validation():
    s = A.AugmentSpec.simclr(32)
    assert (s.brightness, s.hue, s.jitter_p, s.grayscale_p, s.blur_p) == (0.4, 0.1, 0.8, 0.2, 0.0)
    s = A.AugmentSpec.simclr(96, strength=1.0)
    assert (s.brightness, s.saturation, s.hue, s.blur_p) == (0.8, 0.8, 0.2, 0.5)
    assert A.AugmentSpec.simclr(32, blur=True).blur_p == 0.5
    assert A.AugmentSpec.simclr(224, blur=False).blur_p == 0.0
    with pytest.raises(ConfigError, match="crop_scale"):
        A.AugmentSpec(size=32, crop_scale=(0.5, 0.2))
    with pytest.raises(ConfigError, match="hflip_p"):
        A.AugmentSpec(size=32, hflip_p=1.5)


def test_identity_view_is_plain_resize():
    imgs = (_images(b=3, h=10, w=10) * 255).round().to(torch.uint8)
    vm = A.ViewMaker([(A.AugmentSpec.identity(20), 1)], [0.0] * 3, [1.0] * 3)
    (view,) = vm(imgs, _gen(0))
    ref = TF.resize(imgs.float() / 255, [20, 20], InterpolationMode.BILINEAR, antialias=True)
    torch.testing.assert_close(view, ref, atol=1e-5, rtol=0)


MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


@pytest.mark.parametrize("device", DEVICES)
def test_viewmaker_two_views_reproducible(device):
    imgs = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=_gen(0)).to(device)
    spec = A.AugmentSpec(size=32, blur_p=0.5, solarize_p=0.3)
    vm = A.ViewMaker([(spec, 2)], MEAN, STD)
    a, b = vm(imgs, _gen(7, device)), vm(imgs, _gen(7, device))
    c = vm(imgs, _gen(8, device))
    assert len(a) == 2 and all(v.shape == (8, 3, 32, 32) for v in a)
    assert all(v.dtype == torch.float32 and v.device.type == device for v in a)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.allclose(a[0], c[0]) and not torch.allclose(a[0], a[1])
    # normalised pixel range: (0 - mean)/std .. (1 - mean)/std
    m, s = torch.tensor(MEAN, device=device), torch.tensor(STD, device=device)
    v = a[0] * s.view(1, 3, 1, 1) + m.view(1, 3, 1, 1)
    assert v.min() >= -1e-5 and v.max() <= 1 + 1e-5


def test_viewmaker_multicrop_and_one_channel():
    imgs = torch.randint(0, 256, (4, 1, 48, 40), dtype=torch.uint8, generator=_gen(0))
    g1 = A.AugmentSpec.simclr(32, crop_scale=(0.4, 1.0), blur=True)
    local = A.AugmentSpec(size=16, crop_scale=(0.05, 0.4), solarize_p=0.2)
    vm = A.ViewMaker([(g1, 1), (g1, 1), (local, 3)], [0.5], [0.5])
    views = vm(imgs, _gen(1))
    assert vm.num_views == 5 and len(views) == 5
    assert [tuple(v.shape) for v in views] == [(4, 1, 32, 32)] * 2 + [(4, 1, 16, 16)] * 3
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in views)
    assert not torch.equal(views[2], views[3])


def test_viewmaker_rejects_bad_input():
    vm = A.ViewMaker([(A.AugmentSpec.simclr(8), 2)], MEAN, STD)
    with pytest.raises(ValueError, match="uint8"):
        vm(torch.zeros(2, 3, 8, 8, dtype=torch.int32), _gen(0))  # float images in [0, 1]: tests/data/test_augment_float.py
    with pytest.raises(ValueError, match="uint8"):
        vm(torch.zeros(3, 8, 8, dtype=torch.uint8), _gen(0))  # no batch dimension
    with pytest.raises(ValueError, match="channels"):
        vm(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), _gen(0))
    with pytest.raises(ConfigError):
        A.ViewMaker([(A.AugmentSpec.simclr(8), 0)], MEAN, STD)


def test_per_sample_jitter_order_composes_each_samples_ops_in_its_own_order():
    x = _images(b=24)
    params = A.sample_jitter_params(24, 0.4, 0.4, 0.4, 0.1, 0.75, _gen(7))
    order = A.sample_jitter_order(24, _gen(8))
    assert sorted(order[0].tolist()) == [0, 1, 2, 3] and len({tuple(o) for o in order.tolist()}) > 1
    out = A.apply_color_jitter(x, params, order)
    # the masked path (the default off the CPU: no host sync) computes the same as the grouped one
    torch.testing.assert_close(A.apply_color_jitter(x, params, order, grouped=False), out)
    ops = (A.adjust_brightness, A.adjust_contrast, A.adjust_saturation, A.adjust_hue)
    names = ("brightness", "contrast", "saturation", "hue")
    for i in range(24):  # loop reference: one image, its own order, torchvision's composition
        ref = x[i : i + 1]
        if params["apply"][i]:
            for op in order[i].tolist():
                ref = ops[op](ref, params[names[op]][i : i + 1])
        torch.testing.assert_close(out[i : i + 1], ref)


def test_views_of_one_batch_do_not_share_one_jitter_order():
    # hue then saturation differs from saturation then hue: with per-sample orders, a batch of one
    # image repeated shows both results among its views (a shared order would give one of them)
    x = torch.full((64, 3, 8, 8), 0, dtype=torch.uint8)
    x[:, 0], x[:, 1] = 200, 60
    spec = A.AugmentSpec(size=8, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0.0, jitter_p=1.0,
                         brightness=0.0, contrast=0.0, saturation=0.9, hue=0.4, grayscale_p=0.0)
    maker = A.ViewMaker([(spec, 1)], (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    (v,) = maker(x, _gen(0))
    params = A.sample_jitter_params(64, 0.0, 0.0, 0.9, 0.4, 1.0, _gen(0))
    g = _gen(0)
    A.sample_crop_boxes(64, 8, 8, (1.0, 1.0), (1.0, 1.0), g)  # replay the maker's draws
    params = A.sample_jitter_params(64, 0.0, 0.0, 0.9, 0.4, 1.0, g)
    xf = x.float() / 255
    hue_first = A.adjust_saturation(A.adjust_hue(xf, params["hue"]), params["saturation"])
    sat_first = A.adjust_hue(A.adjust_saturation(xf, params["saturation"]), params["hue"])
    is_hue_first = (v - hue_first).abs().amax(dim=(1, 2, 3)) < 1e-5
    is_sat_first = (v - sat_first).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert bool((is_hue_first | is_sat_first).all())
    assert bool((is_hue_first & ~is_sat_first).any()) and bool((is_sat_first & ~is_hue_first).any())


def test_float_data_pass_through_the_view_maker_unaugmented():
    from selfsup.data.augment import AugmentSpec

    x = torch.randn(4, 3, 9, 1)
    x[0, :, 5:] = float("nan")
    views = ViewMaker([(AugmentSpec(size=1), 1)], mean=(1.0, 0.0, 2.0), std=(2.0, 1.0, 4.0),
                      is_image=False)(x, torch.Generator())
    mean, std = torch.tensor([1.0, 0.0, 2.0]).view(1, 3, 1, 1), torch.tensor([2.0, 1.0, 4.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(views[0], (x - mean) / std, equal_nan=True)
