"""Jobs and initializers that benchmark workers import by name.

Standard library only, and module-level: procsup, multiprocessing, pebble,
loky and trio-parallel workers all unpickle these as ``jobs.<name>``, which
works because the benchmark puts ``benchmarks/`` on ``sys.path`` before it
starts any pool (the workers inherit it).
"""

from __future__ import annotations

import os
import time

INIT_CPU_SECONDS = 0.15


def noop() -> None:
    return None


async def async_noop() -> None:
    return None


def getpid() -> int:
    """W1's job: ``os.getpid`` called from a user's module, as real jobs are
    (a worker must import this module before it can run the job)."""
    return os.getpid()


def echo(value: object) -> object:
    """Return the argument: W6's payload round trip, W8's trivial job."""
    return value


def burn_cpu(seconds: float) -> None:
    """Busy-loop until this process has used ``seconds`` of CPU time."""
    deadline = time.process_time() + seconds
    while time.process_time() < deadline:
        pass


def burn_init() -> str:
    """An initializer that costs INIT_CPU_SECONDS of CPU (W2)."""
    burn_cpu(INIT_CPU_SECONDS)
    return "warm"


def raising_init() -> None:
    raise RuntimeError("benchmark: the initializer failed on purpose")


def exiting_init() -> None:
    os._exit(1)


def hanging_init() -> None:
    time.sleep(3600)


def always_true() -> bool:
    """trio-parallel ``retire`` hook: retire every worker after one job."""
    return True
