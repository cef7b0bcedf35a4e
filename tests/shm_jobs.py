"""Jobs for tests/test_shm.py (large payloads through shared memory).
Workers import this module by name."""

from __future__ import annotations

import os
import sys
import time
from typing import Any


def echo(value: Any) -> Any:
    return value


def make_bytes(size: int, kind: str = "bytes") -> Any:
    data = bytes(range(256)) * (size // 256)
    return bytearray(data) if kind == "bytearray" else data


def exit_holding(payload: Any) -> None:
    os._exit(3)


def sleep_holding(payload: Any, seconds: float) -> None:
    time.sleep(seconds)


def shm_modules_loaded(payload: Any = None) -> list[str]:
    """Which of the modules a large payload needs this worker has imported."""
    return [name for name in ("mmap", "procsup._shm", "fcntl") if name in sys.modules]


def send_stray_alloc() -> None:
    """Break the protocol: ask for a result segment for a job that is not running."""
    from procsup import _child, _wire

    assert _child._channel is not None
    _child._channel.send(_wire.encode(_wire.Kind.ALLOC, -1, 4096))
    time.sleep(5)
