"""Jobs and initializers for the tests. Workers import this module by name,
so everything here is module-level and picklable."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any


def noop() -> None:
    return None


def sleepy_init(seconds: float = 0.2) -> dict[str, Any]:
    time.sleep(seconds)
    return {"model": "loaded", "pid": os.getpid()}


def sleep_1s_init() -> str:
    time.sleep(1.0)
    return "warm"


def timed_1s_init(path: str) -> str:
    """sleep_1s_init that appends its begin and end (time.monotonic, one clock
    for every process) to ``path``."""
    begin = time.monotonic()
    time.sleep(1.0)
    with open(path, "a") as file:
        file.write(f"{begin} {time.monotonic()}\n")
    return "warm"


def echo_init(value: Any) -> Any:
    return value


def state() -> Any:
    import procsup

    return procsup.worker_state()


def modules_loaded() -> list[str]:
    return sorted(sys.modules)


def add(a: int, b: int) -> int:
    return a + b


async def async_double(x: int) -> int:
    import trio

    await trio.sleep(0.01)
    return 2 * x


async def async_init() -> str:
    import trio

    await trio.sleep(0.01)
    return "async-warm"


def raise_value_error(message: str = "bad input") -> None:
    raise ValueError(message)


class Unpicklable(Exception):
    def __init__(self, a: int, b: int) -> None:  # args do not round-trip
        super().__init__(f"{a}/{b}")


def raise_unpicklable() -> None:
    raise Unpicklable(1, 2)


def return_unpicklable() -> Any:
    return lambda: None


def exit_now(code: int = 3) -> None:
    os._exit(code)


def kill_self(sig: int = signal.SIGKILL) -> None:
    os.kill(os.getpid(), sig)


def hang() -> None:
    while True:
        time.sleep(1)


def busy_loop() -> None:
    while True:
        pass


def sleep_for(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


def raising_init() -> None:
    raise RuntimeError("model file missing")


def exiting_init() -> None:
    os._exit(7)


def hanging_init() -> None:
    time.sleep(3600)


def getpid() -> int:
    return os.getpid()


def log_lines(n: int = 3) -> int:
    import logging

    log = logging.getLogger("tests.worker")
    for i in range(n):
        log.warning("line %d from the worker", i)
    log.info("bad %s args %s", 1)  # noqa: PLE1206 -- a broken format still arrives as its template
    return n


def log_flood(n: int) -> int:
    import logging

    log = logging.getLogger("tests.flood")
    for i in range(n):
        log.warning("flood %d", i)
    return n


def log_then_exit() -> None:
    import logging

    logging.getLogger("tests.worker").warning("last words")
    sys.exit(0)


def allocate_mb(mb: int, hold: float = 10.0) -> None:
    block = bytearray(mb * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(hold)


def spawn_grandchild_then_hang() -> int:
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    with open(os.environ.get("PROCSUP_TEST_PIDFILE", "/dev/null"), "w") as f:
        f.write(str(proc.pid))
    while True:
        time.sleep(1)


def write_garbage() -> None:
    # Bypass the protocol: write bytes that are not a valid frame.
    from procsup import _child

    assert _child._channel is not None
    os.write(_child._channel.fd, b"\xff\xff\xff\xff\x63garbage")
    time.sleep(5)


def close_channel() -> None:
    from procsup import _child

    assert _child._channel is not None
    os.close(_child._channel.fd)
    time.sleep(30)


def busy_loop_ignoring_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        pass


def hold_the_gil(seconds: float) -> None:
    """Block every thread of the worker (a C call that never releases the GIL)."""
    import re

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        re.match(r"(a+)+$", "a" * 28 + "b")  # catastrophic backtracking, in C


def allocating_init() -> bytearray:
    block = bytearray(300 * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return block


def flaky_init() -> str:
    """Fails while the file named by $PROCSUP_FLAKY exists."""
    if os.path.exists(os.environ["PROCSUP_FLAKY"]):
        raise RuntimeError("flaky dependency unavailable")
    return "ok"


def _claim_start_number() -> int:
    """Which start this is (0 for the first), counted by exclusive files in
    $PROCSUP_SLOTS, so that the test can script each start's fate."""
    directory = os.environ["PROCSUP_SLOTS"]
    n = 0
    while True:
        try:
            os.close(os.open(os.path.join(directory, f"slot{n}"), os.O_CREAT | os.O_EXCL))
            return n
        except FileExistsError:
            n += 1


def first_start_fails_init() -> str:
    """The first start fails at once; later ones succeed after 0.3 s."""
    if _claim_start_number() == 0:
        raise RuntimeError("first start fails")
    time.sleep(0.3)
    return "ok"


def first_start_hangs_init() -> str:
    """The first start never answers; later ones are ready at once."""
    if _claim_start_number() == 0:
        time.sleep(3600)
    return "ok"


def chatty_cpu(seconds: float, per_second: int) -> int:
    """Busy the CPU for ``seconds`` while logging ``per_second`` records a
    second; return how many were logged."""
    import logging

    log = logging.getLogger("tests.chatty")
    gap = 1.0 / per_second
    start = time.perf_counter()
    due = start
    count = 0
    while (now := time.perf_counter()) - start < seconds:
        if now >= due:
            log.warning("chatty %d", count)
            count += 1
            due += gap
    return count


def length(data: bytes) -> int:
    return len(data)


def make_bytes(n: int) -> bytes:
    return b"x" * n


def raise_big(n: int) -> None:
    raise ValueError("x" * n)


def log_big(n: int) -> int:
    import logging

    logging.getLogger("tests.big").warning("%s", "y" * n)
    return n


def linger_at_exit(seconds: float) -> tuple[int, int]:
    """Return (pid, slot); the worker's exit then takes ``seconds`` (an atexit handler)."""
    import atexit

    import procsup

    atexit.register(time.sleep, seconds)
    return os.getpid(), procsup.worker_slot()


def pid_and_slot() -> tuple[int, int]:
    import procsup

    return os.getpid(), procsup.worker_slot()
