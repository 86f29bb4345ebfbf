"""docs/config.md is the output of ``python -m selfsup.config.reference``: regenerate it when a key changes."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from selfsup.config.reference import reference
from selfsup.config.schema import Config
from selfsup.core.registry import METHODS

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"
REGENERATE = "python -m selfsup.config.reference > docs/config.md"


def test_docs_config_md_is_fresh():
    assert DOC.is_file(), f"docs/config.md is missing: {REGENERATE}"
    assert DOC.read_text() == reference(), f"docs/config.md is stale: {REGENERATE}"


def _keys(cls: type, prefix: str) -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        nested = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if nested is not None and dataclasses.is_dataclass(nested):
            keys += _keys(nested, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def test_every_key_and_every_method_has_a_row():
    page = reference()
    for key in _keys(Config, ""):
        assert f"| `{key}` |" in page, key
    for name in METHODS.names():
        cls = METHODS.get(name)
        assert f"### `method.name={name}`" in page, name
        section = page.split(f"### `method.name={name}`")[1].split("\n### ")[0]
        for f in dataclasses.fields(cls.config_class):
            if f.name != "name":
                assert f"| `method.{f.name}` |" in section, (name, f.name)


def test_descriptions_come_from_comments_and_help_metadata():
    """A trailing comment, the comment lines above a field, and ``metadata["help"]`` all reach the page."""
    from selfsup.config.reference import _help

    @dataclasses.dataclass
    class Example:
        a: int = 1  # trailing words
        # words above
        # on two lines
        b: int = 2
        c: int = dataclasses.field(default=3, metadata={"help": "from metadata"})  # not this comment
        d: int = 4

    fields = {f.name: f for f in dataclasses.fields(Example)}
    assert _help(Example, fields["a"]) == "trailing words"
    assert _help(Example, fields["b"]) == "words above on two lines"
    assert _help(Example, fields["c"]) == "from metadata"
    assert _help(Example, fields["d"]) == ""
