"""Small helpers shared by the benchmark cases: statistics, caller loops,
process counting. Imported only inside case processes."""

from __future__ import annotations

import bisect
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn


class NotAvailable(Exception):
    """A case cannot run here (a peer is missing or broke); the message says why."""


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def latency_summary(latencies: Sequence[float]) -> dict[str, float]:
    """p50, p99 and the count of per-call latencies (seconds)."""
    return {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99), "n": len(latencies)}


def bandwidth_summary(times: Sequence[float], nbytes: int, ways: int) -> dict[str, Any]:
    """The median of ``times`` (each moving ``nbytes`` ``ways`` times) and the
    bandwidth it makes, in GB/s (10**9 bytes per second)."""
    mid = median(times)
    gbps = ways * nbytes / mid / 1e9
    return {"median": mid, "gbps": gbps, "mib": nbytes / 2**20, "n": len(times)}


def w6_bytes(quick: bool) -> int:
    """The size of W6's payload: 16 MiB (1 MiB for a smoke run)."""
    return (1 if quick else 16) * 1024 * 1024


def w6_rounds(quick: bool) -> int:
    """Timed W6 round trips, after two untimed ones."""
    return 3 if quick else 20


def make_payload(kind: str, nbytes: int) -> Any:
    """W6's payload: ``bytes`` or a float64 numpy array of ``nbytes``."""
    if kind == "bytes":
        return os.urandom(1024) * (nbytes // 1024)
    try:
        import numpy
    except ImportError as exc:
        raise NotAvailable(f"numpy is not installed ({exc})") from exc
    return numpy.arange(nbytes // 8, dtype=numpy.float64)


def check_echo(sent: Any, got: Any) -> None:
    """Raise unless ``got`` is an equal copy of the payload ``sent``."""
    import pickle

    if type(got) is not type(sent) or pickle.dumps(got, 5) != pickle.dumps(sent, 5):
        raise RuntimeError(f"the echoed {type(sent).__name__} payload came back different")


def max_overtaking(order: Sequence[int]) -> int:
    """The most tickets greater than a ticket that come before it in ``order``:
    how many acquirers that began waiting later got a worker earlier."""
    seen: list[int] = []
    worst = 0
    for ticket in order:
        worst = max(worst, len(seen) - bisect.bisect(seen, ticket))
        bisect.insort(seen, ticket)
    return worst


class JobBudget:
    """Hands out up to ``total`` job tickets, none after ``seconds`` have passed.

    Slow peers (a fresh executor per job) would otherwise blow the run's time
    budget; their rate is then computed over the jobs they finished.
    """

    def __init__(self, total: int, seconds: float) -> None:
        self.total = total
        self.seconds = seconds
        self.deadline = time.perf_counter() + seconds
        self.issued = 0
        self.cut_short = False
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.issued >= self.total:
                return False
            if time.perf_counter() >= self.deadline:
                self.cut_short = True
                return False
            self.issued += 1
            return True


def throughput_result(
    pids: list[int], latencies: list[float], elapsed: float, budget: JobBudget
) -> dict[str, Any]:
    """The W1 figures: jobs/s, latency percentiles, distinct pids."""
    result: dict[str, Any] = {
        "rate": len(pids) / elapsed,
        "elapsed": elapsed,
        "distinct": len(set(pids)) == len(pids),
        **latency_summary(latencies),
    }
    if budget.cut_short:
        result["note"] = f"the {budget.seconds:g} s budget ran out after {len(pids)} jobs"
    return result


def w8_total(quick: bool) -> int:
    """W8's job count: 100,000 (1,000 for a smoke run)."""
    return 1000 if quick else 100_000


def w8_budget(quick: bool) -> float:
    """Seconds a W8 implementation may take for its jobs (slow ones stop early)."""
    return 10.0 if quick else 60.0


def many_jobs_result(
    done: int, elapsed: float, budget: JobBudget, note: str = ""
) -> dict[str, Any]:
    """The W8 figures: jobs/s over the jobs done, and a note when cut short."""
    notes = [note] if note else []
    if budget.cut_short:
        notes.append(f"the {budget.seconds:g} s budget ran out after {done:,} jobs")
    return {"rate": done / elapsed, "elapsed": elapsed, "n": done, "note": "; ".join(notes)}


def run_threaded_callers(
    call: Callable[[], int], total: int, seconds: float, callers: int = 2
) -> dict[str, Any]:
    """``callers`` threads each call ``call()`` (returning a worker pid)
    sequentially until ``total`` jobs are done or ``seconds`` have passed."""
    budget = JobBudget(total, seconds)
    pids: list[int] = []
    latencies: list[float] = []
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            while budget.take():
                start = time.perf_counter()
                pid = call()
                latencies.append(time.perf_counter() - start)
                pids.append(pid)
        except BaseException as exc:  # noqa: BLE001 -- re-raised by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(callers)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:  # a peer that breaks under the workload is reported, not crashed on
        raise NotAvailable(f"{type(errors[0]).__name__}: {errors[0]}")
    return throughput_result(pids, latencies, elapsed, budget)


async def run_trio_callers(
    call: Callable[[], Awaitable[int]], total: int, seconds: float, callers: int = 2
) -> dict[str, Any]:
    """The trio twin of :func:`run_threaded_callers`: ``callers`` tasks each
    await ``call()`` (returning a worker pid) until the budget is spent."""
    import trio

    budget = JobBudget(total, seconds)
    pids: list[int] = []
    latencies: list[float] = []

    async def caller() -> None:
        while budget.take():
            start = time.perf_counter()
            pids.append(await call())
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(callers):
            nursery.start_soon(caller)
    return throughput_result(pids, latencies, time.perf_counter() - start, budget)


def live_children() -> list[int]:
    """Pids of this process's descendants that still exist (zombies included:
    an unreaped child is a leak too)."""
    import psutil

    return [p.pid for p in psutil.Process().children(recursive=True)]


def pid_exists(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a leftover process)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_descendants() -> None:
    """SIGKILL every descendant of this process (case cleanup)."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        try:
            child.kill()
        except psutil.Error:
            pass
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def call_with_timeout(fn: Callable[[], object], seconds: float) -> bool:
    """Run ``fn`` in a daemon thread; True if it returned within ``seconds``."""
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive()


def leftover_workers() -> int:
    """Live (non-zombie) descendants, not counting the long-lived helpers that
    multiprocessing and loky keep on purpose: a resource tracker, or a fork
    server that is our own child (the workers it forks do count)."""
    import psutil

    me = os.getpid()
    count = 0
    for child in psutil.Process(me).children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            cmdline = " ".join(child.cmdline())
            parent = child.ppid()
        except psutil.Error:
            continue
        if "resource_tracker" in cmdline or ("forkserver" in cmdline and parent == me):
            continue
        count += 1
    return count


RESULT_PREFIX = "@@bench-result "


def emit(result: dict[str, Any]) -> None:
    """Hand a case's result to the orchestrator (one marked stdout line)."""
    import json
    import sys

    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def emit_and_exit(result: dict[str, Any]) -> NoReturn:
    """Emit, kill every descendant and leave at once, skipping teardown and
    atexit hooks that may hang (a peer pool stuck on a hanging initializer)."""
    emit(result)
    kill_descendants()
    os._exit(0)
