"""The public names: procsup/__init__.py lists each twice, in the lazy
``_EXPORTS`` table (what runs) and in the ``TYPE_CHECKING`` block (what type
checkers and IDEs see). The two must agree, and every name must resolve to
the object its module defines (as trio's test_exports.py checks its own)."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import procsup

INIT = Path(procsup.__file__)


def _type_checking_imports() -> dict[str, str]:
    """name -> module of each ``from .module import name as name`` in the
    ``if TYPE_CHECKING:`` block."""
    tree = ast.parse(INIT.read_text(encoding="utf-8"))
    blocks = [
        node
        for node in tree.body
        if isinstance(node, ast.If)
        and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
    ]
    found: dict[str, str] = {}
    for block in blocks:
        for node in block.body:
            if not isinstance(node, ast.ImportFrom) or node.level != 1:
                continue  # e.g. typing's Any, for the module's own annotations
            for alias in node.names:
                assert alias.asname == alias.name, f"{alias.name}: re-export as itself"
                found[alias.name] = f"procsup.{node.module}"
    return found


def test_the_export_table_and_the_typing_block_agree() -> None:
    assert _type_checking_imports() == procsup._EXPORTS


def test_every_export_resolves_to_its_module_s_object() -> None:
    for name, module in procsup._EXPORTS.items():
        assert getattr(procsup, name) is getattr(importlib.import_module(module), name)


def test_all_and_dir_list_the_exports() -> None:
    assert set(procsup.__all__) == {"__version__", *procsup._EXPORTS}
    assert len(procsup.__all__) == len(set(procsup.__all__))
    assert set(dir(procsup)) == set(procsup.__all__)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        procsup.no_such_name  # type: ignore[attr-defined]  # noqa: B018


def test_importing_procsup_imports_no_implementation() -> None:
    # The exports are lazy: a worker imports procsup._child through the package.
    probe = "import sys, procsup; print(sorted(m for m in sys.modules if m.startswith('procsup')))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "['procsup']"
