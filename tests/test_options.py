"""One source of truth for the options: the signatures of ``open_worker``
and ``open_pool``, the frozen options classes that hold the defaults, the
functions' docstrings and the tables of docs/reference.rst all agree."""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

import procsup
from procsup._options import PoolOptions, WorkerOptions

REFERENCE = Path(__file__).parent.parent / "docs" / "reference.rst"


def fields(cls: type[Any]) -> dict[str, object]:
    return {f.name: f.default for f in attrs.fields(cls) if f.init}


def parameters(fn: Callable[..., Any]) -> dict[str, object]:
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()}


def reference_table(title: str) -> dict[str, object]:
    """Option name -> its default (the Python literal in the default
    column), from the table under ``title``."""
    lines = REFERENCE.read_text().split(f"\n{title}\n", 1)[1].splitlines()
    borders = [i for i, line in enumerate(lines) if line.startswith("====")]
    rows: dict[str, object] = {}
    for line in lines[borders[1] + 1 : borders[2]]:
        match = re.match(r"``(\w+)``\s+(\S+(?: \S+)*)\s{2,}", line)
        if match:
            rows[match[1]] = ast.literal_eval(match[2].strip("`"))
    return rows


worker_table = reference_table("Worker options")
pool_table = reference_table("Pool options")


def test_open_worker_takes_exactly_the_worker_options_with_their_defaults() -> None:
    assert parameters(procsup.open_worker) == fields(WorkerOptions)


def test_open_pool_takes_exactly_the_pool_and_worker_options_with_their_defaults() -> None:
    expected = {**fields(WorkerOptions), **fields(PoolOptions)}
    assert parameters(procsup.open_pool) == expected


def test_no_option_hides_in_keyword_arguments() -> None:
    for fn in (procsup.open_worker, procsup.open_pool):
        kinds = {p.kind for p in inspect.signature(fn).parameters.values()}
        assert inspect.Parameter.VAR_KEYWORD not in kinds, fn


@pytest.mark.parametrize("fn", [procsup.open_worker, procsup.open_pool])
def test_every_option_is_in_the_docstring(fn: Callable[..., Any]) -> None:
    doc = inspect.getdoc(fn) or ""
    described = [r"^\s*{name}:", r"``{name}``"]  # an Args entry, or named in the text
    missing = [
        name
        for name in parameters(fn)
        if not any(re.search(pattern.format(name=name), doc, re.M) for pattern in described)
    ]
    assert not missing, f"{fn.__name__}'s docstring does not describe {missing}"


def test_the_worker_table_lists_every_worker_option_with_its_default() -> None:
    assert worker_table == fields(WorkerOptions)


def test_the_pool_table_lists_every_pool_option_with_its_default() -> None:
    # the pool's row for init_timeout says how a pool counts it
    expected = {**fields(PoolOptions), "init_timeout": fields(WorkerOptions)["init_timeout"]}
    assert pool_table == expected


def test_classes_users_get_but_must_not_make_say_so() -> None:
    for cls in (procsup.Worker, procsup.Pool):
        with pytest.raises(TypeError, match="no public constructor"):
            cls()
