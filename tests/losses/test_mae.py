"""MAE's loss and patch maps (selfsup.losses.mae) against slow loops written from He et al. 2022
(arXiv:2111.06377), sec. 3: MSE on masked patches only, per-patch normalised pixels."""
import math

import pytest
import torch

from selfsup.losses.mae import mae_loss, patchify, unpatchify


def patchify_reference(images: torch.Tensor, p: int) -> torch.Tensor:
    """Patch (gi, gj) of image b, pixel (u, v) of channel c -> token gi * gw + gj, value (u * p + v) * C + c."""
    b, c, h, w = images.shape
    gh, gw = h // p, w // p
    out = torch.empty(b, gh * gw, p * p * c, dtype=images.dtype)
    for n in range(b):
        for gi in range(gh):
            for gj in range(gw):
                for u in range(p):
                    for v in range(p):
                        for ch in range(c):
                            out[n, gi * gw + gj, (u * p + v) * c + ch] = images[n, ch, gi * p + u, gj * p + v]
    return out


def mae_loss_reference(pred, target, mask, norm_pix: bool, eps: float = 1e-6) -> float:
    """sum over masked patches of mean_k (pred_k - t_k)^2, over the number of masked patches; t normalised by
    the patch's mean and unbiased variance when norm_pix."""
    total, count = 0.0, 0
    for n in range(pred.shape[0]):
        for i in range(pred.shape[1]):
            if not mask[n, i]:
                continue
            t = target[n, i].tolist()
            if norm_pix:
                mu = sum(t) / len(t)
                var = sum((x - mu) ** 2 for x in t) / (len(t) - 1)
                t = [(x - mu) / math.sqrt(var + eps) for x in t]
            total += sum((a - b) ** 2 for a, b in zip(pred[n, i].tolist(), t)) / len(t)
            count += 1
    return total / count


def test_patchify_matches_the_loop_and_unpatchify_inverts_it():
    images = torch.randn(2, 3, 8, 12, dtype=torch.float64)
    patches = patchify(images, 4)
    assert patches.shape == (2, 6, 48)
    assert torch.equal(patches, patchify_reference(images, 4))
    assert torch.equal(unpatchify(patches, 4, (2, 3), 3), images)
    with pytest.raises(ValueError, match="do not split"):
        patchify(images, 5)


def test_patch_order_is_the_vit_token_order():
    """Token i of a ViT's patch embedding is the patch patchify puts at row i (a 1x1-channel conv check)."""
    images = torch.arange(16.0).view(1, 1, 4, 4)
    conv = torch.nn.Conv2d(1, 1, 2, stride=2, bias=False)
    conv.weight.data = torch.tensor([[[[1.0, 10.0], [100.0, 1000.0]]]])  # weights pixel (u, v) by 10^(2u + v)
    tokens = conv(images).flatten(2).transpose(1, 2)  # [1, 4, 1], timm's PatchEmbed order
    weights = torch.tensor([1.0, 10.0, 100.0, 1000.0])  # (u * p + v) order of patchify's values
    assert torch.equal(tokens[..., 0], patchify(images, 2) @ weights)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_mae_loss_matches_the_paper(norm_pix):
    gen = torch.Generator().manual_seed(1)
    pred, target = torch.randn(3, 5, 12, generator=gen, dtype=torch.float64), torch.randn(3, 5, 12, generator=gen,
                                                                                          dtype=torch.float64)
    mask = torch.rand(3, 5, generator=gen) < 0.6
    mask[0, 0] = True
    got = mae_loss(pred, target, mask, norm_pix=norm_pix)
    assert got.item() == pytest.approx(mae_loss_reference(pred, target, mask, norm_pix), rel=1e-6)


def test_hand_checked_case():
    pred = torch.zeros(1, 2, 4)
    target = torch.tensor([[[1.0, 1.0, 1.0, 1.0], [0.0, 2.0, 0.0, 2.0]]])
    mask = torch.tensor([[True, True]])
    assert mae_loss(pred, target, mask, norm_pix=False).item() == pytest.approx((1.0 + 2.0) / 2)
    # normalised: patch 1 is constant -> 0; patch 2 has mean 1, unbiased var 4/3 -> values +-sqrt(3/4)
    assert mae_loss(pred, target, mask, norm_pix=True).item() == pytest.approx((0.0 + 0.75 / (1 + 0.75e-6)) / 2, rel=1e-5)


def test_visible_patches_do_not_enter_the_loss():
    """Neither the target pixels nor the predictions of visible (unmasked) patches change the loss, and only
    the masked patches' predictions get a gradient."""
    gen = torch.Generator().manual_seed(2)
    pred = torch.randn(2, 6, 8, generator=gen, requires_grad=True)
    target = torch.randn(2, 6, 8, generator=gen)
    mask = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 1, 1, 0, 0, 0]], dtype=torch.bool)
    loss = mae_loss(pred, target, mask)
    other_target = torch.where(mask[..., None], target, torch.randn(2, 6, 8, generator=gen) * 100)
    other_pred = torch.where(mask[..., None], pred.detach(), torch.randn(2, 6, 8, generator=gen) * 100)
    assert mae_loss(pred, other_target, mask).item() == pytest.approx(loss.item(), rel=1e-6)
    assert mae_loss(other_pred, target, mask).item() == pytest.approx(loss.item(), rel=1e-6)
    loss.backward()
    assert (pred.grad[~mask] == 0).all() and (pred.grad[mask].abs().sum(-1) > 0).all()


def test_no_gradient_reaches_the_target_and_fp32_under_autocast():
    pred = torch.randn(2, 4, 8, requires_grad=True)
    target = torch.randn(2, 4, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = mae_loss(pred.bfloat16(), target.bfloat16(), torch.ones(2, 4, dtype=torch.bool))
    assert loss.dtype == torch.float32
    loss.backward()
    assert target.grad is None and pred.grad is not None
