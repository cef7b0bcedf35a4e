"""Jobs for tests/test_learn.py: a pool learns this module's name when it
runs one of them."""

from __future__ import annotations

import sys


def imported(name: str) -> bool:
    return name in sys.modules


def touch() -> str:
    return "touched"
