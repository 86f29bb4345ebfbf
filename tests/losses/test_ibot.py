"""iBOT's masked-patch loss (selfsup.losses.ibot) against a slow loop written from Zhou et al. 2022
(arXiv:2111.07832), eq. 2: -sum_i m_i P_t(u_i)^T log P_s(u_hat_i), per image over its masked patches."""
import math

import pytest
import torch

from selfsup.core.errors import ConfigError
from selfsup.losses.ibot import ibot_patch_loss


def reference(student, teacher, masks, student_temp):
    """mean over views and images of (sum over masked patches i of H(q_i, softmax(s_i / tau)) / #masked)."""
    views = []
    for s, q, m in zip(student, teacher, masks):
        images = []
        for b in range(s.shape[0]):
            total, count = 0.0, 0
            for i in range(s.shape[1]):
                if not m[b, i]:
                    continue
                logits = [x / student_temp for x in s[b, i].tolist()]
                log_z = math.log(sum(math.exp(x) for x in logits))
                total += -sum(qk * (x - log_z) for qk, x in zip(q[b, i].tolist(), logits))
                count += 1
            images.append(total / count if count else 0.0)
        views.append(sum(images) / len(images))
    return sum(views) / len(views)


def inputs(seed=0, views=2, b=3, n=5, k=7):
    gen = torch.Generator().manual_seed(seed)
    student = [torch.randn(b, n, k, generator=gen, dtype=torch.float64) for _ in range(views)]
    teacher = [torch.softmax(torch.randn(b, n, k, generator=gen, dtype=torch.float64) / 0.1, -1) for _ in range(views)]
    masks = [torch.rand(b, n, generator=gen) < 0.4 for _ in range(views)]
    masks[0][0] = False  # an image with no masked patch contributes 0
    masks[0][1, 2] = True
    return student, teacher, masks


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_the_paper(seed):
    student, teacher, masks = inputs(seed)
    got = ibot_patch_loss(student, teacher, masks, student_temp=0.1)
    assert got.item() == pytest.approx(reference(student, teacher, masks, 0.1), abs=1e-5, rel=1e-5)


def test_only_masked_positions_count_and_gradients_reach_only_them():
    student, teacher, masks = inputs(2, views=1)
    student = [student[0].requires_grad_()]
    changed = [teacher[0].clone()]
    changed[0][~masks[0]] = torch.softmax(torch.randn_like(changed[0][~masks[0]]), -1)
    a = ibot_patch_loss(student, teacher, masks, 0.1)
    assert a.item() == pytest.approx(ibot_patch_loss(student, changed, masks, 0.1).item(), abs=1e-12)
    a.backward()
    assert (student[0].grad[~masks[0]] == 0).all() and (student[0].grad[masks[0]] != 0).any()


def test_teacher_equal_to_student_gives_its_entropy_and_no_mask_gives_zero():
    logits = torch.randn(2, 4, 6, dtype=torch.float64)
    q = torch.softmax(logits, -1)
    entropy = -(q * q.log()).sum(-1).mean()
    assert ibot_patch_loss([logits], [q], [torch.ones(2, 4, dtype=torch.bool)], 1.0).item() == pytest.approx(entropy.item())
    assert ibot_patch_loss([logits], [q], [torch.zeros(2, 4, dtype=torch.bool)], 1.0).item() == 0.0


def test_bad_arguments_fail_in_one_line():
    student, teacher, masks = inputs()
    with pytest.raises(ConfigError, match=r"^ibot_patch_loss: student_temp must be a finite number > 0, got 0$"):
        ibot_patch_loss(student, teacher, masks, 0)
    with pytest.raises(ValueError, match="one of each per view"):
        ibot_patch_loss(student, teacher[:1], masks, 0.1)
