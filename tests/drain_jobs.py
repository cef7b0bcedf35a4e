"""Jobs for tests/test_drain.py (workers import this module by name)."""

from __future__ import annotations

import os
import time

_kept: list[bytes] = []


def sleep_then_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def grow_then_pid(mib: int) -> int:
    """Keep ``mib`` MiB of touched memory (every page written: it counts in PSS)."""
    _kept.append(b"\x01" * (mib * 1024 * 1024))
    return os.getpid()
