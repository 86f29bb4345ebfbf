"""The house rule "nothing imports upward", checked on the source (ast), late imports included.

Role packages are ranked bottom to top; a module may import its own package and any package
ranked below it, never one above it, and the module graph has no circle at all.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import selfsup

ROOT = Path(selfsup.__file__).resolve().parent
# Bottom to top. The entry points (cli, __main__, the package __init__) sit above everything.
LAYERS = ["core", "config", "data", "models", "losses", "methods", "evaluation", "engine", "runs", "transfer", "benchmarks"]
ENTRY = {"selfsup", "selfsup.cli", "selfsup.__main__"}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The selfsup modules ``path`` imports, anywhere in the file (a late import is still an import)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def _rank(module: str) -> int:
    if module in ENTRY:
        return len(LAYERS)
    return LAYERS.index(module.split(".")[1])


def test_every_module_sits_in_a_ranked_role_package():
    loose = [m for m in _modules() if m not in ENTRY and m.split(".")[1] not in LAYERS]
    assert not loose, f"modules outside the role packages {LAYERS}: {loose}"


def test_nothing_imports_upward():
    upward = [f"{a} -> {b}" for a, deps in _graph().items() for b in deps if _rank(b) > _rank(a)]
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def test_no_import_circles():
    graph, state, cycles = _graph(), {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("bad, expect", [
    ("from selfsup.runs.train import train\n", "selfsup.core.errors -> selfsup.runs.train"),
])
def test_the_checker_sees_an_upward_late_import(tmp_path, bad, expect, monkeypatch):
    """A late (function-level) import is found: the rule cannot be dodged by hiding an import."""
    source = ROOT / "core" / "errors.py"
    modules = _modules()
    text = source.read_text() + "\n\ndef _late():\n    " + bad.replace("\n", "\n    ")
    fake = tmp_path / "errors.py"
    fake.write_text(text)
    deps = _imports(fake, "selfsup.core.errors", modules)
    assert "selfsup.runs.train" in deps and _rank("selfsup.runs.train") > _rank("selfsup.core.errors"), expect
