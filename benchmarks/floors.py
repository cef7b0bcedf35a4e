"""A. Floors: what the OS and the interpreter cost on this machine, measured
in the same run as everything else. Standard library only, and no threads
in this process (the fork loop and the forked echo child stay clean)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import Any

from _util import latency_summary, median

MESSAGE = b"x" * 32  # a small frame, about the size of a trivial job


def python_start(quick: bool) -> dict[str, Any]:
    """Wall time of ``python -c pass`` (this interpreter), median of 20."""
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
    """os.fork + os._exit + waitpid, one after another: forks per second."""
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
    n = 200 if quick else 2000
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
    try:
        latencies = []
        for i in range(n + 50):
            start = time.perf_counter()
            parent.sendall(MESSAGE)
            _recv_exact(parent, len(MESSAGE))
            if i >= 50:  # the first round trips warm caches and the scheduler
                latencies.append(time.perf_counter() - start)
    finally:
        parent.close()
        os.waitpid(pid, 0)
    return latency_summary(latencies)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return b""
        data += chunk
    return data
