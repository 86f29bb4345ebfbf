"""The house rule "one split protocol": outside selfsup/data nothing asks which kind of split it has.

A split is an in-memory ``ImageDataset`` or a streamed ``StreamingImageFolder``; both implement
``selfsup.data.split.Split``, and the trainer, the evaluation and the runs read them only through
it. So no module outside ``selfsup/data`` names the streamed kind or its helpers (text, comments and
docstrings included), nor checks ``isinstance(..., ImageDataset)`` (ast).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import selfsup

ROOT = Path(selfsup.__file__).resolve().parent
KIND_NAMES = ("StreamingImageFolder", "is_streaming", "StepStream", "SliceSteps")
KINDS = {"ImageDataset", "StreamingImageFolder"}
_MENTION = re.compile(r"\b(" + "|".join(KIND_NAMES) + r")\b")


def _outside_data() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if p.relative_to(ROOT).parts[0] != "data")


def kind_checks(path: Path) -> list[str]:
    """Where ``path`` tells the kinds of split apart: a mention of the streamed kind's names, or an
    ``isinstance`` / ``issubclass`` against a kind."""
    text = path.read_text()
    found = [f"{path.name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(1)}" for m in _MENTION.finditer(text)]
    for node in ast.walk(ast.parse(text)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("isinstance", "issubclass") and len(node.args) == 2):
            named = {n.id if isinstance(n, ast.Name) else n.attr for n in ast.walk(node.args[1])
                     if isinstance(n, (ast.Name, ast.Attribute))}
            found += [f"{path.name}:{node.lineno}: {node.func.id}(..., {k})" for k in sorted(named & KINDS)]
    return found


def test_nothing_outside_data_tells_the_kinds_of_split_apart():
    found = [hit for path in _outside_data() for hit in kind_checks(path)]
    assert not found, "use the selfsup.data.split.Split protocol instead of:\n" + "\n".join(found)


def test_the_checker_sees_a_kind_check(tmp_path):
    fake = tmp_path / "fake.py"
    fake.write_text("from selfsup.data import ImageDataset\n\n"
                    "def f(data):\n    return isinstance(data, ImageDataset)\n")
    assert kind_checks(fake) == ["fake.py:4: isinstance(..., ImageDataset)"]
    fake.write_text("def f(data):\n    return data.images  # unless is_streaming(data)\n")
    assert kind_checks(fake) == ["fake.py:2: is_streaming"]
