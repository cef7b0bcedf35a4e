"""A job module that imports trio."""

from __future__ import annotations

import os

import trio

IMPORTED_BY = os.getpid()


def touch() -> str:
    return trio.__name__
