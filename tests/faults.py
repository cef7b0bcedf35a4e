"""Fault injection for the crash matrix, the chaos run and the model test.

Workers import this module by name, so everything here is module-level and
picklable. A :class:`Fault` says what goes wrong (``kind``); the phase hooks
below say when: in the initializer, in a thread while the worker is idle, while
the job's arguments are unpickled (job start), in the job, while its result is
pickled, or in an ``atexit`` hook (shutdown).

A fault with ``once`` set fires once per ``workdir`` (the first process to
claim its token fires, the others run clean): a pool whose every worker carries
the fault still gets healthy replacements.

Also here: initializers that fail on a schedule (chaos, model, parent-death
tests), and :func:`loop_lag`, which measures the parent's event-loop lag (for
stress tests and benchmarks; it runs in the parent, never in a worker).
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

KINDS = (
    "raise",
    "exit",
    "sigkill",
    "segv",
    "hang",
    "memory",
    "garbage",
    "close_channel",
    "grandchild",
)
EXIT_CODE = 13
MEMORY_LIMIT_MB = 100
MEMORY_MB = 200  # what the "memory" fault allocates and holds
GRANDCHILD_PIDFILE = "grandchild.pid"


class InjectedFault(RuntimeError):
    """What the "raise" fault raises."""


@dataclass(frozen=True)
class Fault:
    kind: str
    workdir: str = ""  # where tokens and the grandchild's pid file go
    once: bool = False  # fire in the first process only (needs workdir)
    delay: float = 0.0  # seconds before firing (in the idle thread and the job)


def claim(fault: Fault) -> bool:
    """True for the one process that may fire this fault."""
    if not fault.once:
        return True
    try:
        os.close(os.open(os.path.join(fault.workdir, "fired"), os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


def fire(fault: Fault) -> None:
    """Do the fault, in the calling thread. Most kinds never return."""
    kind = fault.kind
    if kind == "raise":
        raise InjectedFault(f"injected fault in pid {os.getpid()}")
    if kind == "exit":
        os._exit(EXIT_CODE)
    if kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "segv":
        import ctypes
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file
        ctypes.string_at(0)
    elif kind == "hang":
        # The whole process freezes, like a C extension holding the GIL: no
        # thread answers pings any more.
        os.kill(os.getpid(), signal.SIGSTOP)
    elif kind == "memory":
        block = bytearray(MEMORY_MB * 1024 * 1024)
        for i in range(0, len(block), 4096):
            block[i] = 1
        _hold(block)
    elif kind == "garbage":
        os.write(_channel_fd(), b"\xff\xff\xff\xff\x63garbage")
    elif kind == "close_channel":
        os.close(_channel_fd())
    elif kind == "grandchild":
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        path = os.path.join(fault.workdir, GRANDCHILD_PIDFILE)
        with open(path + ".tmp", "w") as f:
            f.write(str(proc.pid))
        os.replace(path + ".tmp", path)
        os._exit(EXIT_CODE)
    else:
        raise ValueError(f"unknown fault kind {kind!r}")
    _hold(None)


def _hold(obj: object) -> None:
    while True:
        time.sleep(3600)


def _channel_fd() -> int:
    from procsup import _child

    assert _child._channel is not None
    return _child._channel.fd


# -- phases --------------------------------------------------------------------


def init_fault(fault: Fault) -> str:
    """Initializer: the fault fires during initialization."""
    if claim(fault):
        fire(fault)
    return "warm"


def idle_fault(fault: Fault) -> str:
    """Initializer: a thread fires the fault ``fault.delay`` s after warming."""

    def later() -> None:
        time.sleep(fault.delay)
        if claim(fault):
            try:
                fire(fault)
            finally:
                _mark(fault, "idle-fault-done")

    threading.Thread(target=later, daemon=True).start()
    return "warm"


def shutdown_fault(fault: Fault) -> str:
    """Initializer: the fault fires in an ``atexit`` hook, as the worker exits."""

    def at_exit() -> None:
        if claim(fault):
            fire(fault)

    atexit.register(at_exit)
    return "warm"


def job_fault(fault: Fault) -> str:
    """Job: fires after ``fault.delay`` s of running."""
    time.sleep(fault.delay)
    if claim(fault):
        fire(fault)
    return "survived"


class FireOnUnpickle:
    """A job argument that fires its fault as the worker unpickles it."""

    def __init__(self, fault: Fault) -> None:
        self.fault = fault

    def __reduce__(self) -> tuple[Any, ...]:
        return (_fire_and_return, (self.fault,))


class FireOnPickle:
    """A job result that fires its fault as the worker pickles it."""

    def __init__(self, fault: Fault) -> None:
        self.fault = fault

    def __reduce__(self) -> tuple[Any, ...]:
        if claim(self.fault):
            fire(self.fault)
        return (str, ("result",))


def _fire_and_return(fault: Fault) -> str:
    if claim(fault):
        fire(fault)
    return "argument"


def take(arg: object) -> object:
    """Job: return its argument (the fault fired while it was unpickled)."""
    return arg


def result_fault(fault: Fault) -> FireOnPickle:
    """Job: returns a result that fires the fault as it is sent back."""
    return FireOnPickle(fault)


def _mark(fault: Fault, name: str) -> None:
    if fault.workdir:
        with open(os.path.join(fault.workdir, name), "w"):
            pass


# -- chaos ---------------------------------------------------------------------


def chaos_job(value: int, kind: str | None = None, workdir: str = "", seconds: float = 0.0) -> int:
    """A job that sleeps ``seconds``, then may fire a fault; returns ``value``."""
    if seconds:
        time.sleep(seconds)
    if kind is not None:
        fire(Fault(kind, workdir))
    return value


def chaos_init(workdir: str, seed: int, fail_rate: float) -> str:
    """Initializer: the n-th start (counted in ``workdir``) fails by raising
    or exiting when a generator seeded with (seed, n) says so."""
    import random

    rng = random.Random(f"{seed}:{count_start(workdir)}")
    if rng.random() < fail_rate:
        fire(Fault(rng.choice(["raise", "exit"])))
    return "warm"


def fast_then_slow(workdir: str, fast: int) -> str:
    """Initializer: the first ``fast`` starts warm at once, later ones never."""
    if count_start(workdir) >= fast:
        _hold(None)
    return "warm"


def stubborn_hang() -> None:
    """Job: hangs and ignores cancellation (SIGTERM blocked): only SIGKILL
    ends it, after ``cancel_grace``."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    _hold(None)


def flag_init(path: str) -> str:
    """Initializer: fails while the file ``path`` exists."""
    if os.path.exists(path):
        raise InjectedFault(f"start failure: {path} exists")
    return "warm"


def count_start(workdir: str) -> int:
    """Number this start: 0, 1, 2... across the processes sharing ``workdir``."""
    import fcntl

    with open(os.path.join(workdir, "starts"), "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released on close
        f.seek(0)
        n = len(f.read())
        f.write(".")
    return n


# -- measuring the parent ---------------------------------------------------------


class LoopLag:
    """How late the parent's event loop wakes a task that sleeps ``interval``
    seconds in a loop: each sample is the oversleep, in seconds."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.samples: list[float] = []

    async def run(self) -> None:
        import trio

        while True:
            before = trio.current_time()
            await trio.sleep(self.interval)
            self.samples.append(trio.current_time() - before - self.interval)

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0-100) of the samples, in seconds."""
        if not self.samples:
            return 0.0
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


def loop_lag(interval: float = 0.01) -> Any:
    """``async with loop_lag() as lag: ...`` then ``lag.percentile(99)``: the
    event loop's lag while the block ran (for tests and benchmarks)."""
    from contextlib import asynccontextmanager

    import trio

    @asynccontextmanager
    async def measuring() -> Any:
        lag = LoopLag(interval)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lag.run)
            try:
                yield lag
            finally:
                nursery.cancel_scope.cancel()

    return measuring()
