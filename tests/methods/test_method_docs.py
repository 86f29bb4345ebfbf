"""Every registered method class documents itself (issue 16, point 7): ``help(SimCLR)`` showed the base
class's docstring. Its own docstring names the paper, says what it computes and gives tensor shapes."""
import re

import pytest

from selfsup.methods import METHODS


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_class_has_its_own_docstring_with_paper_and_shapes(name):
    cls = METHODS.get(name)
    doc = cls.__dict__.get("__doc__")
    assert doc and doc.strip(), f"{cls.__name__} has no docstring of its own (help() shows the base class's)"
    assert doc != cls.__mro__[1].__doc__
    for arxiv in re.findall(r"arXiv:\d{4}\.\d{4,5}", cls.paper):
        assert arxiv in doc, f"{cls.__name__}'s docstring does not cite {arxiv} (its `paper`)"
    assert re.search(r"\d{4}", doc), f"{cls.__name__}'s docstring names no paper (year)"
    assert re.search(r"\[\d*B, ", doc), f"{cls.__name__}'s docstring gives no tensor shapes like [B, ...]"
