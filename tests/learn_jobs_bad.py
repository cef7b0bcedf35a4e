"""A job module that imports in the parent and fails in any worker."""

from __future__ import annotations

import procsup

if procsup.in_worker():
    raise ImportError("this module refuses to be imported in a worker")


def touch() -> str:
    return "unreachable in a worker"
