"""The house rule "a new method is its file, its loss, its recipes and its test file": everything else
reads what a method declares (config ranges, ``multi_size``, ``uses_labels``, ``tiny``, ...) from the
registry, so no module outside selfsup/methods and selfsup/losses spells a method's name (a table
keyed by method, a special case) — checked on the source (ast), docstrings and comments aside.
"""
from __future__ import annotations

import ast
from pathlib import Path

import selfsup
from selfsup.methods import METHODS

ROOT = Path(selfsup.__file__).resolve().parent
OWN = {"methods", "losses"}  # where a method and its loss live
# The one place that may name a method: the default of method.name.
ALLOWED = {("config/schema.py", "simclr")}


def names_in_strings(path: Path, names: set[str]) -> list[tuple[int, str]]:
    """(line, name) for every string constant that is a method's name or says ``method.name=NAME``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            hits = {n for n in names if node.value == n or f"method.name={n}" in node.value}
            found += [(node.lineno, n) for n in sorted(hits)]
    return found


def test_no_module_outside_the_methods_and_losses_names_a_method():
    names = set(METHODS.names())
    assert "simclr" in names and len(names) > 5
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.split("/")[0] in OWN:
            continue
        offenders += [f"selfsup/{rel}:{line}: '{name}'" for line, name in names_in_strings(path, names)
                      if (rel, name) not in ALLOWED]
    assert not offenders, "declare it on the method class or its config instead:\n" + "\n".join(offenders)


def test_the_check_sees_a_table_keyed_by_method(tmp_path):
    source = tmp_path / "table.py"
    source.write_text('"""DINO and jigsaw docs are fine."""\nSPECIAL = {"dino": 1}\nHINT = f"use method.name=jigsaw"\n')
    assert names_in_strings(source, {"dino", "jigsaw"}) == [(2, "dino"), (3, "jigsaw")]
