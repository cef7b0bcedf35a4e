"""A. Floors: what the OS and the interpreter cost on this machine, measured
in the same run as everything else.

Run as its own script (``floors.py --case NAME``) in a bare interpreter: not
even ``threading`` is imported before a measurement, because its at-fork
hook alone halves the fork rate. Helpers are imported after measuring.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Any

MESSAGE = b"x" * 32  # a small frame, about the size of a trivial job


def python_start(quick: bool) -> dict[str, Any]:
    """Wall time of ``python -c pass`` (this interpreter), median of 20."""
    import subprocess

    from _util import median

    n = 5 if quick else 20
    argv = [sys.executable, "-c", "pass"]
    for _ in range(2):  # warm the page cache
        subprocess.run(argv, check=True)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run(argv, check=True)
        times.append(time.perf_counter() - start)
    return {"median": median(times), "min": min(times), "n": n}


def fork_rate(quick: bool) -> dict[str, Any]:
    """os.fork + os._exit + waitpid, one after another, from a bare
    interpreter: forks per second."""
    n = 100 if quick else 500
    start = time.perf_counter()
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    elapsed = time.perf_counter() - start
    return {"rate": n / elapsed, "n": n}


def socketpair_rtt(quick: bool) -> dict[str, Any]:
    """Round trip of a 32-byte message to a forked echo child over a blocking
    socketpair: the floor under any worker's job round trip."""
    parent, pid = _echo_child()

    async def round_trip() -> None:  # awaits nothing: driven without a loop
        parent.sendall(MESSAGE)
        _recv_exact(parent, len(MESSAGE))

    timing = _time_round_trips(parent, pid, round_trip, quick)
    try:
        timing.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("the round trip awaited something")


def trio_rtt(quick: bool) -> dict[str, Any]:
    """The same round trip from a trio event loop -- send, ``wait_readable``,
    recv, no other work: the floor under any trio library's round trip."""
    parent, pid = _echo_child()  # forked before trio (and its threads) exist
    import trio

    parent.setblocking(False)

    async def main() -> dict[str, Any]:
        async def round_trip() -> None:
            parent.send(MESSAGE)
            got = 0
            while got < len(MESSAGE):
                await trio.lowlevel.wait_readable(parent)
                got += len(parent.recv(len(MESSAGE) - got))

        return await _time_round_trips(parent, pid, round_trip, quick)

    return trio.run(main)


def memcpy_bandwidth(quick: bool) -> dict[str, Any]:
    """Copy W6's payload into a buffer of the same size, in this process:
    the bandwidth any payload round trip is measured against (median of 20)."""
    from _util import bandwidth_summary, w6_bytes  # threading does not matter here

    nbytes = w6_bytes(quick)
    source = os.urandom(1024) * (nbytes // 1024)
    target = bytearray(nbytes)  # allocated and touched once: the copy alone is timed
    times = []
    for _ in range(22):
        start = time.perf_counter()
        target[:] = source
        times.append(time.perf_counter() - start)
    return bandwidth_summary(times[2:], nbytes, ways=1)


def _echo_child() -> tuple[socket.socket, int]:
    parent, child = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the echo child
        parent.close()
        try:
            while data := _recv_exact(child, len(MESSAGE)):
                child.sendall(data)
        finally:
            os._exit(0)
    child.close()
    return parent, pid


_WARMUP = 50  # the first round trips warm caches and the scheduler


async def _time_round_trips(
    parent: socket.socket, pid: int, round_trip: Any, quick: bool
) -> dict[str, Any]:
    """Time ``await round_trip()`` repeatedly, then reap the echo child."""
    latencies: list[float] = []
    try:
        for _ in range(_count(quick)):
            start = time.perf_counter()
            await round_trip()
            latencies.append(time.perf_counter() - start)
    finally:
        _reap_echo_child(parent, pid)
    return _summary(latencies)


def _count(quick: bool) -> int:
    return (200 if quick else 2000) + _WARMUP


def _reap_echo_child(parent: socket.socket, pid: int) -> None:
    parent.close()
    os.waitpid(pid, 0)


def _summary(latencies: list[float]) -> dict[str, Any]:
    from _util import latency_summary

    return latency_summary(latencies[_WARMUP:])


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return b""
        data += chunk
    return data


if __name__ == "__main__":
    name = sys.argv[sys.argv.index("--case") + 1]
    result = globals()[name]("--quick" in sys.argv)
    from _util import emit

    emit(result)
