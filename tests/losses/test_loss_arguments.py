"""Every loss refuses a temperature (or weight, margin, scale) that would give NaN or nonsense
instead of a loss (issue 16, point 7): ``nt_xent(..., temperature=0)`` returned NaN."""
import pytest
import torch

from selfsup import losses as L
from selfsup.core.errors import ConfigError, SelfsupError

torch.manual_seed(0)
Z_A, Z_B, QUEUE = torch.randn(6, 8), torch.randn(6, 8), torch.randn(10, 8)
LOGITS = [torch.randn(6, 5) for _ in range(2)]
CENTER = torch.zeros(5)
SCORES, TARGET = torch.randn(6, 4), torch.randint(0, 4, (6,))

# (call taking the scalar, its name, whether 0 is allowed)
CASES = {
    "nt_xent": (lambda v: L.nt_xent(Z_A, Z_B, v), "temperature", False),
    "dcl": (lambda v: L.dcl(Z_A, Z_B, v), "temperature", False),
    "dclw temperature": (lambda v: L.dclw(Z_A, Z_B, v), "temperature", False),
    "dclw sigma": (lambda v: L.dclw(Z_A, Z_B, 0.1, sigma=v), "sigma", False),
    "infonce": (lambda v: L.infonce(Z_A, Z_B, QUEUE, v), "temperature", False),
    "dino_loss student": (lambda v: L.dino_loss(LOGITS, LOGITS, CENTER, v, 0.04), "student_temp", False),
    "dino_loss teacher": (lambda v: L.dino_loss(LOGITS, LOGITS, CENTER, 0.1, v), "teacher_temp", False),
    "teacher_entropy": (lambda v: L.teacher_entropy(LOGITS, CENTER, v), "teacher_temp", False),
    "multiclass_hinge": (lambda v: L.multiclass_hinge(SCORES, TARGET, v), "margin", True),
    "barlow_twins_loss": (lambda v: L.barlow_twins_loss(Z_A, Z_B, v), "lambd", True),
    "cross_correlation eps": (lambda v: L.cross_correlation(Z_A, Z_B, eps=v), "eps", True),
    "vicreg_loss sim": (lambda v: L.vicreg_loss(Z_A, Z_B, sim_weight=v), "sim_weight", True),
    "vicreg_loss var": (lambda v: L.vicreg_loss(Z_A, Z_B, var_weight=v), "var_weight", True),
    "vicreg_loss cov": (lambda v: L.vicreg_loss(Z_A, Z_B, cov_weight=v), "cov_weight", True),
    "vicreg_loss gamma": (lambda v: L.vicreg_loss(Z_A, Z_B, gamma=v), "gamma", True),
    "vicreg_terms gamma": (lambda v: sum(L.vicreg_terms(Z_A, Z_B, gamma=v)), "gamma", True),
    "vicreg_variance eps": (lambda v: L.vicreg_variance(Z_A, eps=v), "eps", True),
    "supcon_loss": (lambda v: L.supcon_loss(Z_A, TARGET, v), "temperature", False),
    "triplet_loss": (lambda v: L.triplet_loss(Z_A, TARGET, v), "margin", False),
    "contrastive_margin_loss": (lambda v: L.contrastive_margin_loss(Z_A, TARGET, v), "margin", False),
    "swav_loss": (lambda v: L.swav_loss([SCORES, SCORES], [SCORES.softmax(1)], v), "temperature", False),
    "nnclr_loss": (lambda v: L.nnclr_loss(Z_A, Z_B, v), "temperature", False),
    "mocov3_loss": (lambda v: L.mocov3_loss(Z_A, Z_B, Z_B, Z_A, v), "temperature", False),
    "ibot_patch_loss": (lambda v: L.ibot_patch_loss([LOGITS[0][:, None]], [LOGITS[1][:, None].softmax(-1)],
                                                    [torch.ones(6, 1, dtype=torch.bool)], v), "student_temp", False),
    "koleo_loss": (lambda v: L.koleo_loss(Z_A, eps=v), "eps", False),
    "mae_loss eps": (lambda v: L.mae_loss(Z_A[None], Z_B[None], torch.ones(1, 6), eps=v), "eps", True),
}


@pytest.mark.parametrize("case", CASES)
def test_a_bad_scalar_is_refused_with_one_line_naming_it(case):
    call, name, zero_ok = CASES[case]
    bad = [-1.0, float("nan"), float("inf"), torch.tensor(-0.5)] + ([] if zero_ok else [0, 0.0, torch.tensor(0.0)])
    for value in bad:
        with pytest.raises(ConfigError) as err:
            call(value)
        assert name in str(err.value) and "\n" not in str(err.value)
        assert isinstance(err.value, SelfsupError)
    for value in [0.5, torch.tensor(0.5)] + ([0.0] if zero_ok else []):
        assert torch.isfinite(call(value)).all()


def test_the_message_names_the_loss_and_the_rule():
    with pytest.raises(ConfigError, match=r"^nt_xent: temperature must be a finite number > 0, got 0$"):
        L.nt_xent(Z_A, Z_B, temperature=0)


def test_every_public_loss_taking_a_scalar_is_covered():
    """A new loss with a temperature-like argument must join CASES."""
    import inspect

    scalars = {"temperature", "sigma", "student_temp", "teacher_temp", "margin", "lambd", "eps", "gamma",
               "sim_weight", "var_weight", "cov_weight"}
    covered = {case.split()[0] for case in CASES}
    for name in L.__all__:
        params = set(inspect.signature(getattr(L, name)).parameters)
        if params & scalars:
            assert name in covered, f"{name} takes {params & scalars}: add it to CASES"
