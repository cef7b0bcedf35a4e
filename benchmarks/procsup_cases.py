"""B to F: procsup's own figures, for either start method."""

from __future__ import annotations

import itertools
import os
import time
from functools import partial
from typing import Any

import jobs
import trio
from _util import (
    JobBudget,
    NotAvailable,
    bandwidth_summary,
    check_echo,
    latency_summary,
    live_children,
    make_payload,
    many_jobs_result,
    max_overtaking,
    median,
    percentile,
    pid_exists,
    run_trio_callers,
    w6_bytes,
    w6_rounds,
    w8_budget,
    w8_total,
)

import procsup
from procsup._options import default_start_method

MIB = 1024 * 1024
W1_IDLE = 2  # issue 14's workload: 2 callers, 2 warm workers
W1_JOBS = {"module": jobs.getpid, "builtin": os.getpid}
W3_INIT_TIMEOUT = 1.0
W3_ATTEMPTS = 3
W3_GIVE_UP = 30.0  # a procsup hang is reported, not waited out
W4_IDLE = 2
LOAD_BUDGET = 20.0  # seconds: the acquirers stop taking jobs after this
LAG_TICK = 0.001  # the lag watcher's sleep: short, so a 0.3 s run gives ~200 samples
FAILING_INITS = {"raise": jobs.raising_init, "exit": jobs.exiting_init, "hang": jobs.hanging_init}


def require(method: str) -> None:
    """Raise NotAvailable when procsup's ``method`` backend cannot be imported."""
    if method == "forkserver":
        try:
            import procsup._forkserver  # noqa: F401
        except ImportError as exc:
            raise NotAvailable(f"procsup forkserver backend not importable ({exc})") from exc


# -- B: one worker -------------------------------------------------------------


def worker_spawn(quick: bool) -> dict[str, Any]:
    """Spawn-to-ready of open_worker() with a no-op initializer, median of 20."""
    n = 5 if quick else 20

    async def main() -> list[float]:
        times = []
        for i in range(n + 2):
            start = time.perf_counter()
            async with procsup.open_worker(jobs.noop):
                ready = time.perf_counter() - start
            if i >= 2:  # the first starts pay for imports in this process
                times.append(ready)
        return times

    times = trio.run(main)
    return {"median": median(times), "min": min(times), "n": n}


def worker_rtt(quick: bool) -> dict[str, Any]:
    """Warm round trip of worker.run(noop) on open_worker(max_jobs=None)."""
    n = 50 if quick else 200

    async def main() -> list[float]:
        latencies = []
        async with procsup.open_worker(jobs.noop, max_jobs=None) as worker:
            for i in range(n + 20):
                start = time.perf_counter()
                await worker.run(jobs.noop)
                if i >= 20:
                    latencies.append(time.perf_counter() - start)
        return latencies

    return latency_summary(trio.run(main))


# -- C: the pool ----------------------------------------------------------------


def w2_warm(method: str, quick: bool) -> dict[str, Any]:
    """Time until 4 workers whose initializer burns 150 ms of CPU are warm."""
    require(method)
    rounds = 1 if quick else 3

    async def once() -> float:
        start = time.perf_counter()
        async with procsup.open_pool(jobs.burn_init, idle=4, start_method=method) as pool:
            await pool.wait_warm()
            return time.perf_counter() - start

    async def main() -> list[float]:
        return [await once() for _ in range(rounds)]

    times = trio.run(main)
    cores = min(os.cpu_count() or 1, 4)
    ideal = 4 * jobs.INIT_CPU_SECONDS / cores
    return {"median": median(times), "min": min(times), "ideal": ideal, "n": rounds}


def w1_throughput(method: str, job: str, quick: bool, budget_s: float) -> dict[str, Any]:
    """200 getpid jobs, each in a fresh worker (max_jobs=1), 2 callers; the
    job is ``jobs.getpid`` (``job="module"``, a module the worker must
    import) or ``os.getpid`` (``"builtin"``)."""
    require(method)
    total = 20 if quick else 200

    async def main() -> dict[str, Any]:
        async with procsup.open_pool(idle=W1_IDLE, start_method=method) as pool:
            await pool.wait_warm()
            call = partial(pool.run, W1_JOBS[job])
            result = await run_trio_callers(call, total, budget_s)
            starts = pool.statistics().starts
        result["note"] = ", ".join(filter(None, [result.get("note"), f"{starts} starts"]))
        return result

    return trio.run(main)


# -- D: start failures, sequential jobs, memory -----------------------------------


def w3_start_failure(method: str, mode: str, idle: int) -> dict[str, Any]:
    """Seconds until pool.run raises when every start fails in ``mode``, and
    the processes left: failed starts still alive at the raise, and any
    descendant at all once the pool is closed."""
    require(method)
    failed_pids: set[int] = set()

    def on_event(event: Any) -> None:
        if event.kind == "start_failed" and event.pid is not None:
            failed_pids.add(event.pid)

    async def main() -> dict[str, Any]:
        raised = None
        start = time.perf_counter()
        async with procsup.open_pool(
            FAILING_INITS[mode],
            idle=idle,
            init_timeout=W3_INIT_TIMEOUT,
            max_acquire_attempts=W3_ATTEMPTS,
            start_method=method,
            on_event=on_event,
        ) as pool:
            with trio.move_on_after(W3_GIVE_UP):
                try:
                    await pool.run(jobs.noop)
                except Exception as exc:  # noqa: BLE001 -- the error is the result
                    raised = exc
            elapsed = time.perf_counter() - start
            left = sum(map(pid_exists, failed_pids))
            starts = pool.statistics().starts
        after_close = len(live_children())
        if raised is None:
            return {"hang": W3_GIVE_UP, "left": left, "after_close": after_close}
        return {
            "seconds": elapsed,
            "left": left,
            "after_close": after_close,
            "raised": type(raised).__name__,
            "note": f"idle={idle}, {starts} starts",
        }

    return trio.run(main)


def w4_sequential(method: str, reuse: bool, quick: bool) -> dict[str, Any]:
    """100 sequential noop jobs on a warm pool: one-shot (max_jobs=1, idle=2)
    or reusing workers (max_jobs=None)."""
    require(method)
    n = 20 if quick else 100

    async def main() -> dict[str, Any]:
        async with procsup.open_pool(
            idle=W4_IDLE, max_jobs=None if reuse else 1, start_method=method
        ) as pool:
            latencies = await _sequential(pool, jobs.noop, n, warmup=10 if reuse else 0)
            stats = pool.statistics()
        result: dict[str, Any] = latency_summary(latencies)
        # Reusing workers should start about `idle` of them; more is a pool bug
        # (and the extra starts load the CPU during the measurement).
        result["note"] = f"{stats.starts} starts, {stats.idle} idle at the end"
        return result

    return trio.run(main)


async def _sequential(pool: procsup.Pool, job: Any, n: int, warmup: int) -> list[float]:
    """Latencies of ``n`` sequential ``pool.run(job)`` once warm, after ``warmup`` more."""
    await pool.wait_warm()
    for _ in range(warmup):
        await pool.run(job)
    latencies = []
    for _ in range(n):
        start = time.perf_counter()
        await pool.run(job)
        latencies.append(time.perf_counter() - start)
    return latencies


def w4_async_reuse(quick: bool) -> dict[str, Any]:
    """W4 reuse of a trivial ``async def`` job on ``worker_loop="asyncio"``
    workers, and in the same run of a sync noop on default workers (both at
    the default start method): the async p50 and ``sync_p50``."""
    n = 20 if quick else 100

    async def main() -> tuple[list[float], list[float]]:
        async with procsup.open_pool(idle=W4_IDLE, max_jobs=None) as pool:
            sync = await _sequential(pool, jobs.noop, n, warmup=10)
        async with procsup.open_pool(idle=W4_IDLE, max_jobs=None, worker_loop="asyncio") as pool:
            on_loop = await _sequential(pool, jobs.async_noop, n, warmup=10)
        return sync, on_loop

    sync, on_loop = trio.run(main)
    result: dict[str, Any] = latency_summary(on_loop)
    result["sync_p50"] = percentile(sync, 50)
    result["note"] = f"start method {default_start_method(pool=True)}"
    return result


def w5_memory(method: str) -> dict[str, Any]:
    """RSS/USS/PSS of one idle warm worker (no initializer), in MiB."""
    require(method)
    import psutil

    ready: list[int] = []

    def on_event(event: Any) -> None:
        if event.kind == "ready" and event.pid is not None:
            ready.append(event.pid)

    async def main() -> Any:
        async with procsup.open_pool(idle=1, start_method=method, on_event=on_event) as pool:
            await pool.wait_warm()
            await trio.sleep(0.3)  # settle: lazy imports, thread stacks
            return psutil.Process(ready[-1]).memory_full_info()

    info = trio.run(main)
    return {"rss": info.rss / MIB, "uss": info.uss / MIB, "pss": info.pss / MIB}


# -- F: payloads, a thousand workers, many small jobs -------------------------------


def w6_payload(kind: str, quick: bool) -> dict[str, Any]:
    """Round trip of a 16 MiB payload (``bytes`` or a numpy array) through
    ``pool.run(jobs.echo, payload)`` on a reusing worker: median of 20."""
    payload = make_payload(kind, w6_bytes(quick))

    async def main() -> list[float]:
        async with procsup.open_pool(idle=1, max_jobs=None) as pool:
            await pool.wait_warm()
            for _ in range(2):  # the worker imports numpy, the buffers grow
                check_echo(payload, await pool.run(jobs.echo, payload))
            times = []
            for _ in range(w6_rounds(quick)):
                start = time.perf_counter()
                await pool.run(jobs.echo, payload)
                times.append(time.perf_counter() - start)
            return times

    return bandwidth_summary(trio.run(main), w6_bytes(quick), ways=2)


W7_SOFT_LIMIT = 1024  # the usual default soft RLIMIT_NOFILE


def w7_idle_workers(quick: bool) -> dict[str, Any]:
    """Open a pool of 1,000 idle reusing workers under the usual default soft
    descriptor limit: time until warm, a job through it, the parent's
    descriptors, and the parent's CPU while it sits idle."""
    import resource

    count = 20 if quick else 1000
    # seconds idle, from right after warming: the first pings of the workers
    # that warmed first (at ping_interval) fall in it, then the bounded rate
    window = 1.0 if quick else 10.0
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(W7_SOFT_LIMIT, hard), hard))

    async def main() -> dict[str, Any]:
        start = time.perf_counter()
        async with procsup.open_pool(idle=count, max_jobs=None) as pool:
            await pool.wait_warm()
            opened = time.perf_counter() - start
            await pool.run(jobs.noop)
            fds = len(os.listdir("/proc/self/fd"))
            cpu = time.process_time()
            idle_start = time.perf_counter()
            await trio.sleep(window)
            cpu_per_s = (time.process_time() - cpu) / (time.perf_counter() - idle_start)
            starts = pool.statistics().starts
            closing = time.perf_counter()
        closed = time.perf_counter() - closing
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return {
            "open": opened,
            "rate": count / opened,
            "cpu": cpu_per_s,
            "cpu_per_worker": cpu_per_s / count,
            "fds": fds,
            "fds_per_worker": fds / count,
            "close": closed,
            "workers": count,
            "setting": f"{starts} starts; soft descriptor limit {min(W7_SOFT_LIMIT, hard)} "
            f"at open, {limit} after; {window:g} s idle",
        }

    return trio.run(main)


W8_WORKERS = 2  # the concurrency of every W8 implementation


def w8_many_jobs(order: str, quick: bool) -> dict[str, Any]:
    """100,000 ``jobs.echo`` calls on 2 reusing workers through ``pool.map``
    (``order``: ``"unordered"``, as ``imap_unordered``, or ``"ordered"``)."""
    total = w8_total(quick)
    budget = JobBudget(total, w8_budget(quick))
    done = 0
    seen = 0

    async def main() -> dict[str, Any]:
        nonlocal done, seen
        async with procsup.open_pool(
            idle=W8_WORKERS, max_workers=W8_WORKERS, max_jobs=None
        ) as pool:
            await pool.wait_warm()
            for _ in range(10):
                await pool.run(jobs.echo, 0)
            start = time.perf_counter()
            async with pool.map(
                jobs.echo, range(total), max_in_flight=W8_WORKERS, ordered=order == "ordered"
            ) as results:
                async for value in results:
                    if not budget.take():  # only the deadline refuses
                        break
                    seen += value
                    done += 1
            elapsed = time.perf_counter() - start
            starts = pool.statistics().starts
        if done == total and seen != total * (total - 1) // 2:
            raise RuntimeError("pool.map's answers do not add up")
        return many_jobs_result(done, elapsed, budget, f"{starts} starts")

    return trio.run(main)


# -- E: load ----------------------------------------------------------------------


def load_fairness(tasks: int, total: int, size: int, quick: bool) -> dict[str, Any]:
    """``tasks`` acquirers share ``total`` noop jobs on a warm pool of ``size``
    reused workers (default start method): throughput, acquire waits, FIFO
    overtaking, and the lag of the parent's event loop meanwhile."""
    total = total // 5 if quick else total
    tickets = itertools.count()  # taken when an acquirer starts waiting
    order: list[int] = []  # the tickets, in the order their acquires returned
    waits: list[float] = []
    lags: list[float] = []

    async def acquirer(pool: procsup.Pool, budget: JobBudget) -> None:
        while budget.take():
            ticket = next(tickets)
            start = time.perf_counter()
            async with pool.acquire() as worker:
                waits.append(time.perf_counter() - start)
                order.append(ticket)
                await worker.run(jobs.noop)

    async def watch_lag() -> None:
        while True:
            start = trio.current_time()
            await trio.sleep(LAG_TICK)
            lags.append(trio.current_time() - start - LAG_TICK)

    async def main() -> dict[str, Any]:
        async with procsup.open_pool(idle=size, max_workers=size, max_jobs=None) as pool:
            await pool.wait_warm()
            budget = JobBudget(total, LOAD_BUDGET)
            async with trio.open_nursery() as outer:
                outer.start_soon(watch_lag)
                start = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    for _ in range(tasks):
                        nursery.start_soon(acquirer, pool, budget)
                elapsed = time.perf_counter() - start
                outer.cancel_scope.cancel()
            starts = pool.statistics().starts
        notes = [f"{tasks} tasks, {default_start_method(pool=True)}, {starts} starts"]
        if budget.cut_short:
            notes.append(f"the {LOAD_BUDGET:g} s budget ran out after {len(waits)} jobs")
        return {
            "rate": len(waits) / elapsed,
            **latency_summary(waits),
            "max_wait": max(waits),
            "overtake": max_overtaking(order),
            "lag_p50": percentile(lags, 50),
            "lag_p99": percentile(lags, 99),
            "lag_max": max(lags),
            "lag_n": len(lags),
            "note": "; ".join(notes),
        }

    return trio.run(main)
