"""Jobs for tests/test_job_api.py (workers import this module by name)."""

from __future__ import annotations

import os
import time


def sleep_then_touch(seconds: float, path: str) -> int:
    """Sleep, then leave a file saying which worker got that far."""
    time.sleep(seconds)
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    return os.getpid()


def sleep_then_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def getpid() -> int:
    return os.getpid()
