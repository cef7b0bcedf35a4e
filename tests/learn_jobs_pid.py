"""A job module that records which process imported it."""

from __future__ import annotations

import os

IMPORTED_BY = os.getpid()


def touch() -> str:
    return "pid"
