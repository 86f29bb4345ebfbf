"""Rotation (Gidaris et al. 2018): labels, the loss over all four rotations, head and views."""
import torch
import torch.nn.functional as F

from selfsup.methods.rotation import rotate_batch
from support.methods import build


def test_rotation_labels_follow_rot90_counter_clockwise():
    x = torch.randn(5, 3, 8, 8)
    rotated, labels = rotate_batch(x)
    assert rotated.shape == (20, 3, 8, 8) and labels.tolist() == [k for k in range(4) for _ in range(5)]
    for i in range(20):  # rotating back by the label recovers the original
        assert torch.equal(torch.rot90(rotated[i], -int(labels[i]), dims=(-2, -1)), x[i % 5])
    square = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    assert rotate_batch(square)[0][1, 0].tolist() == [[2.0, 4.0], [1.0, 3.0]]  # 90 degrees counter-clockwise


def test_rotation_loss_is_cross_entropy_over_all_four_rotations():
    method = build("rotation").eval()  # eval: BatchNorm per sample, so a loop reference compares
    x = torch.randn(3, 3, 16, 16)
    out = method([x], torch.zeros(3, dtype=torch.long), {})
    terms = []
    for b in range(3):
        for k in range(4):
            logits = method.head(method.backbone(torch.rot90(x[b : b + 1], k, dims=(2, 3))))
            terms.append(-F.log_softmax(logits, dim=1)[0, k])
    assert torch.allclose(out["loss"], torch.stack(terms).mean(), atol=1e-5)
    assert 0 <= out["rotation_acc"] <= 1 and out["rotation_acc"].ndim == 0


def test_rotation_head_and_views():
    method = build("rotation", head_hidden_dim=32)
    features = method.backbone.num_features
    assert method.head(torch.randn(6, features)).shape == (6, 4)
    assert build("rotation").head(torch.randn(6, features)).shape == (6, 4)  # linear by default
    ((spec, count),) = method.views
    assert count == 1 and spec.size == 16 and spec.jitter_p == spec.grayscale_p == spec.blur_p == 0
    assert spec.crop_scale[0] >= 0.5
