"""Jobs for the Pool.map tests (workers import it by name)."""

from __future__ import annotations

import time


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


def slow_on_zero(x: int) -> int:
    """Input 0 takes long; the rest are quick."""
    if x == 0:
        time.sleep(0.5)
    return x
