"""Jobs for the Pool.map and ``procsup run`` tests (workers import this module by name)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def square(x: int) -> int:
    return x * x


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"three is bad: {x}")
    return x


def sleep_then_return(seconds: float) -> float:
    """Sleep, then return the argument: later inputs can finish first."""
    time.sleep(seconds)
    return seconds


def touch_after(args: list[Any]) -> str:
    """``[path, seconds]``: sleep, then create ``path`` (the job's side effect)."""
    path, seconds = args
    time.sleep(seconds)
    Path(path).touch()
    return str(path)


def slow_on_zero(x: int) -> int:
    """Input 0 takes long; the rest are quick."""
    if x == 0:
        time.sleep(0.5)
    return x


def pid(_: object = None) -> int:
    return os.getpid()


def add(a: int, b: int = 0, *, c: int = 0) -> int:
    return a + b + c


def record_then_exit(args: list[Any]) -> int:
    """``[path, x]``: append x to path; exits the process (a crash) on x == 2."""
    path, x = args
    with open(path, "a") as f:
        f.write(f"{x}\n")
    return int(x)
