"""Jobs for the Pool.map tests (workers import it by name)."""

from __future__ import annotations

import os
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


def logged(arg: tuple[str, int, str]) -> int:
    """``(log directory, x, action)``: note ``x`` in this worker's log file
    (one a line, before acting), then act: ``""`` returns ``x``, ``"crash"``
    exits the process, ``"raise"`` raises ValueError, ``"sleep:S"`` sleeps S
    seconds first. The logs say which inputs ran, where, and how often."""
    log_dir, x, action = arg
    with open(os.path.join(log_dir, str(os.getpid())), "a") as log:
        log.write(f"{x}\n")
    if action == "crash":
        os._exit(3)
    if action == "raise":
        raise ValueError(f"input {x} raises")
    if action.startswith("sleep:"):
        time.sleep(float(action.removeprefix("sleep:")))
    return x


def ran(log_dir: str) -> dict[int, list[int]]:
    """What :func:`logged` wrote: the inputs each worker pid ran, in order."""
    runs = {}
    for name in os.listdir(log_dir):
        with open(os.path.join(log_dir, name)) as log:
            runs[int(name)] = [int(line) for line in log.read().split()]
    return runs


class Gated:
    """A map function for the batch races the tests make certain. Its input
    ``(x, action)``: it writes ``x`` (a line) to the fifo ``began``, then for
    ``"hold"`` waits for a byte on the fifo ``go``, for ``"sleep"`` sleeps
    30 s (a cancel request interrupts it), and returns ``x``. Unpickled a
    second time in one worker (a batch's second order, before any of its jobs
    begins), it first writes ``order 2`` to ``began`` and waits for a byte on
    ``go``."""

    def __init__(self, began: str, go: str) -> None:
        self.began = began
        self.go = go

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return _unpickle_gated, (self.began, self.go)

    def __call__(self, arg: tuple[int, str]) -> int:
        x, action = arg
        _say(self.began, str(x))
        if action == "hold":
            _wait_for_byte(self.go)
        elif action == "sleep":
            time.sleep(30)
        return x


_gated_unpickled = 0  # in this worker process


def _unpickle_gated(began: str, go: str) -> Gated:
    global _gated_unpickled
    _gated_unpickled += 1
    if _gated_unpickled == 2:
        _say(began, "order 2")
        _wait_for_byte(go)
    return Gated(began, go)


def _say(fifo: str, line: str) -> None:
    with open(fifo, "w") as out:
        out.write(f"{line}\n")


def _wait_for_byte(fifo: str) -> None:
    fd = os.open(fifo, os.O_RDONLY)
    try:
        os.read(fd, 1)
    finally:
        os.close(fd)
