"""A job module that imports trio and numpy (numpy's BLAS may start threads)."""

from __future__ import annotations

import os

import numpy
import trio

IMPORTED_BY = os.getpid()


def touch() -> str:
    return f"{trio.__name__} {numpy.__name__}"
