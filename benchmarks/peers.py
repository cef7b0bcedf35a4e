"""The peers: multiprocessing, concurrent.futures, pebble, loky, trio-parallel.

Each peer is configured for one-shot workers (a fresh process per job) where
it has a knob for it:

* multiprocessing.Pool(2, maxtasksperchild=1), fork / forkserver / spawn;
* concurrent.futures.ProcessPoolExecutor(2, max_tasks_per_child=1) on the
  forkserver context (max_tasks_per_child refuses fork);
* pebble.ProcessPool(2, max_tasks=1) (its default context: fork on Linux);
* loky has no per-task recycling, so each job gets a fresh
  loky.ProcessPoolExecutor(max_workers=1), shut down after the job;
* trio_parallel: a WorkerContext(retire=jobs.always_true), retiring each
  worker after one job, default worker type (spawn).

Their W1 job is ``jobs.getpid``, in a user module, as procsup's default W1
case. W6 and W8 reuse workers: multiprocessing.Pool with fork, and
trio-parallel's default context.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any, NoReturn

import jobs
from _util import (
    JobBudget,
    NotAvailable,
    bandwidth_summary,
    check_echo,
    emit_and_exit,
    latency_summary,
    leftover_workers,
    make_payload,
    many_jobs_result,
    run_threaded_callers,
    run_trio_callers,
    w6_bytes,
    w6_rounds,
    w8_budget,
    w8_total,
)

MIB = 1024 * 1024
WARM_PAUSE = 0.5  # lets a peer's pre-started workers boot, as wait_warm does for procsup
W1_JOB = jobs.getpid
W8_WORKERS = 2  # as procsup's W8 pool
FAILING_INITS = {"raise": jobs.raising_init, "exit": jobs.exiting_init, "hang": jobs.hanging_init}


def _import(name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise NotAvailable(f"{name} is not installed ({exc})") from exc


# -- W1: one-shot throughput ------------------------------------------------------


def _warm_then_measure(call: Callable[[], int], total: int, budget_s: float) -> dict[str, Any]:
    call()
    call()
    time.sleep(WARM_PAUSE)
    return run_threaded_callers(call, total, budget_s)


def w1_mp(method: str, total: int, budget_s: float) -> dict[str, Any]:
    ctx = multiprocessing.get_context(method)
    pool = ctx.Pool(2, maxtasksperchild=1)
    try:
        return _warm_then_measure(lambda: pool.apply(W1_JOB), total, budget_s)
    finally:
        pool.terminate()
        pool.join()


def w1_ppe(total: int, budget_s: float) -> dict[str, Any]:
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(2, mp_context=ctx, max_tasks_per_child=1) as executor:
        return _warm_then_measure(lambda: executor.submit(W1_JOB).result(), total, budget_s)


def w1_pebble(total: int, budget_s: float) -> dict[str, Any]:
    pebble = _import("pebble")
    pool = pebble.ProcessPool(max_workers=2, max_tasks=1)
    try:
        return _warm_then_measure(lambda: pool.schedule(W1_JOB).result(), total, budget_s)
    finally:
        pool.stop()
        pool.join()


def w1_loky(total: int, budget_s: float) -> dict[str, Any]:
    loky = _import("loky")

    def call() -> int:
        with loky.ProcessPoolExecutor(max_workers=1) as executor:
            return executor.submit(W1_JOB).result()  # type: ignore[no-any-return]

    return run_threaded_callers(call, total, budget_s)


def w1_trio_parallel(total: int, budget_s: float) -> dict[str, Any]:
    trio_parallel = _import("trio_parallel")
    import trio

    async def main() -> dict[str, Any]:
        async with trio_parallel.open_worker_context(retire=jobs.always_true) as ctx:
            return await run_trio_callers(partial(ctx.run_sync, W1_JOB), total, budget_s)

    return trio.run(main)


# -- W6: payload round trip; W8: many small jobs -------------------------------------


def w6_mp_fork(kind: str, quick: bool) -> dict[str, Any]:
    """``Pool(1).apply(jobs.echo, (payload,))`` with fork: median of 20."""
    payload = make_payload(kind, w6_bytes(quick))
    pool = multiprocessing.get_context("fork").Pool(1)
    try:
        return _time_echoes(lambda: pool.apply(jobs.echo, (payload,)), payload, quick)
    finally:
        pool.terminate()
        pool.join()


def w6_trio_parallel(kind: str, quick: bool) -> dict[str, Any]:
    """``trio_parallel.run_sync(jobs.echo, payload)`` (default context): median of 20."""
    trio_parallel = _import("trio_parallel")
    import trio

    payload = make_payload(kind, w6_bytes(quick))

    async def main() -> dict[str, Any]:
        async with trio_parallel.open_worker_context() as ctx:
            call = partial(ctx.run_sync, jobs.echo, payload)
            return await _time_echoes_async(call, payload, quick)

    return trio.run(main)


def _time_echoes(call: Callable[[], Any], payload: Any, quick: bool) -> dict[str, Any]:
    for _ in range(2):
        check_echo(payload, call())
    times = []
    for _ in range(w6_rounds(quick)):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return bandwidth_summary(times, w6_bytes(quick), ways=2)


async def _time_echoes_async(call: Callable[[], Any], payload: Any, quick: bool) -> dict[str, Any]:
    for _ in range(2):
        check_echo(payload, await call())
    times = []
    for _ in range(w6_rounds(quick)):
        start = time.perf_counter()
        await call()
        times.append(time.perf_counter() - start)
    return bandwidth_summary(times, w6_bytes(quick), ways=2)


def w8_mp_fork(quick: bool) -> dict[str, Any]:
    """100,000 ``jobs.echo`` calls through ``Pool(2).imap_unordered(chunksize=1)``, fork."""
    total = w8_total(quick)
    budget = JobBudget(total, w8_budget(quick))
    pool = multiprocessing.get_context("fork").Pool(W8_WORKERS)
    try:
        for _ in range(10):
            pool.apply(jobs.echo, (0,))
        time.sleep(WARM_PAUSE)
        done = 0
        seen = 0
        start = time.perf_counter()
        for value in pool.imap_unordered(jobs.echo, range(total), chunksize=1):
            if not budget.take():  # only the deadline refuses: at most `total` answers come
                break
            seen += value
            done += 1
        elapsed = time.perf_counter() - start
    finally:
        pool.terminate()
        pool.join()
    if done == total and seen != total * (total - 1) // 2:
        raise RuntimeError("imap_unordered's answers do not add up")
    return many_jobs_result(done, elapsed, budget)


def w8_trio_parallel(quick: bool) -> dict[str, Any]:
    """100,000 ``jobs.echo`` calls through trio-parallel's default context,
    2 tasks calling ``run_sync`` in a loop (limiter of 2)."""
    trio_parallel = _import("trio_parallel")
    import trio

    total = w8_total(quick)
    budget = JobBudget(total, w8_budget(quick))
    limiter = trio.CapacityLimiter(W8_WORKERS)
    done = 0

    async def caller(ctx: Any) -> None:
        nonlocal done
        while budget.take():
            ticket = budget.issued
            if await ctx.run_sync(jobs.echo, ticket, limiter=limiter) != ticket:
                raise RuntimeError(f"job {ticket} came back with another answer")
            done += 1

    async def main() -> dict[str, Any]:
        async with trio_parallel.open_worker_context() as ctx:
            async with trio.open_nursery() as nursery:  # start both workers
                for _ in range(W8_WORKERS):
                    nursery.start_soon(partial(ctx.run_sync, jobs.echo, 0, limiter=limiter))
            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(W8_WORKERS):
                    nursery.start_soon(caller, ctx)
            return many_jobs_result(done, time.perf_counter() - start, budget)

    return trio.run(main)


# -- W3: start failures -------------------------------------------------------------


def w3_peer(peer: str, mode: str, cap: float) -> NoReturn:
    """Seconds until the first job raises when every worker's initializer
    fails in ``mode``; "hangs" past ``cap``. Never returns: the peer's pool
    may be unable to shut down, so the process emits and exits."""
    init = FAILING_INITS[mode]
    submit = _W3_SUBMITTERS[peer]
    start = time.perf_counter()
    try:
        submit(init, cap)
    except (TimeoutError, multiprocessing.TimeoutError):
        emit_and_exit({"hang": cap, "left": leftover_workers()})
    except Exception as exc:  # noqa: BLE001 -- whatever the peer raises is the result
        elapsed = time.perf_counter() - start
        emit_and_exit(
            {"seconds": elapsed, "raised": type(exc).__name__, "left": leftover_workers()}
        )
    emit_and_exit({"error": "the job succeeded although every initializer fails"})


def _w3_mp_fork(init: Callable[[], None], cap: float) -> None:
    pool = multiprocessing.get_context("fork").Pool(2, initializer=init)
    pool.apply_async(os.getpid).get(timeout=cap)


def _w3_ppe(init: Callable[[], None], cap: float) -> None:
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("forkserver")
    executor = ProcessPoolExecutor(2, mp_context=ctx, initializer=init)
    executor.submit(os.getpid).result(timeout=cap)


def _w3_pebble(init: Callable[[], None], cap: float) -> None:
    pool = _import("pebble").ProcessPool(max_workers=2, initializer=init)
    pool.schedule(os.getpid).result(timeout=cap)


def _w3_loky(init: Callable[[], None], cap: float) -> None:
    executor = _import("loky").ProcessPoolExecutor(max_workers=2, initializer=init)
    executor.submit(os.getpid).result(timeout=cap)


def _w3_trio_parallel(init: Callable[[], None], cap: float) -> None:
    trio_parallel = _import("trio_parallel")
    import trio

    async def main() -> None:
        async with trio_parallel.open_worker_context(init=init, grace_period=1.0) as ctx:
            with trio.move_on_after(cap):
                await ctx.run_sync(os.getpid, kill_on_cancel=True)
                return
            # Leaving the context would wait for the stuck worker: emit now.
            emit_and_exit({"hang": cap, "left": leftover_workers()})

    trio.run(main)


_W3_SUBMITTERS: dict[str, Callable[[Callable[[], None], float], None]] = {
    "mp_fork": _w3_mp_fork,
    "ppe_forkserver": _w3_ppe,
    "pebble": _w3_pebble,
    "loky": _w3_loky,
    "trio_parallel": _w3_trio_parallel,
}
W3_PEERS = tuple(_W3_SUBMITTERS)


# -- W4 and W5: multiprocessing's fork pool as the reference -------------------------


def w4_mp_fork_oneshot(quick: bool) -> dict[str, Any]:
    """100 sequential noop jobs on Pool(2, maxtasksperchild=1), fork."""
    n = 20 if quick else 100
    pool = multiprocessing.get_context("fork").Pool(2, maxtasksperchild=1)
    try:
        pool.apply(jobs.noop)
        time.sleep(WARM_PAUSE)
        latencies = []
        for _ in range(n):
            start = time.perf_counter()
            pool.apply(jobs.noop)
            latencies.append(time.perf_counter() - start)
    finally:
        pool.terminate()
        pool.join()
    return latency_summary(latencies)


def w4_trio_parallel_reuse(quick: bool) -> dict[str, Any]:
    """100 sequential noop jobs through trio-parallel's reusing workers, fork
    worker type (the reference of issue 14's reuse target)."""
    trio_parallel = _import("trio_parallel")
    import trio

    n = 20 if quick else 100

    async def main() -> dict[str, Any]:
        fork = trio_parallel.WorkerType.FORK
        async with trio_parallel.open_worker_context(worker_type=fork) as ctx:
            for _ in range(10):
                await ctx.run_sync(jobs.noop)
            latencies = []
            for _ in range(n):
                start = time.perf_counter()
                await ctx.run_sync(jobs.noop)
                latencies.append(time.perf_counter() - start)
        return latency_summary(latencies)

    return trio.run(main)


def w5_mp_fork() -> dict[str, Any]:
    """RSS/USS/PSS of one idle multiprocessing fork worker, forked from a
    parent that imported what a procsup user's parent has (trio, procsup)."""
    import psutil
    import trio  # noqa: F401

    import procsup._pool  # noqa: F401

    pool = multiprocessing.get_context("fork").Pool(1)
    try:
        pid = pool.apply(os.getpid)
        time.sleep(0.3)
        info = psutil.Process(pid).memory_full_info()
    finally:
        pool.terminate()
        pool.join()
    return {"rss": info.rss / MIB, "uss": info.uss / MIB, "pss": info.pss / MIB}
