"""Jobs for tests/test_learn.py: a pool learns this module's name when it
runs one of them."""

from __future__ import annotations

import sys
from typing import Any


def imported(name: str) -> bool:
    return name in sys.modules


def touch() -> str:
    return "touched"


def imported_by(name: str) -> int | None:
    """The pid of the process that imported ``name`` (its IMPORTED_BY), if it is imported."""
    module = sys.modules.get(name)
    return None if module is None else module.IMPORTED_BY


def x_of(point: Any) -> int:
    return point.x
