"""Barlow Twins (Zbontar et al. 2021): the step's loss is the loss of its projections. The loss:
tests/losses/test_noncontrastive.py; the views (BYOL's): tests/methods/test_byol.py::test_views."""
import pytest

from support.methods import check_method_loss_is_the_loss_of_its_projections

pytestmark = pytest.mark.usefixtures("seeded")


def test_method_loss_is_the_loss_of_its_projections():
    check_method_loss_is_the_loss_of_its_projections("barlowtwins")
