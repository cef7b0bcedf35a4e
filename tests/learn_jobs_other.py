"""A job module of its own, for tests/test_learn.py to see imported ahead."""

from __future__ import annotations


def touch() -> str:
    return "other"
