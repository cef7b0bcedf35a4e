"""The queue soak (``nox -s soak``; skipped without ``--soak``): 10,000 jobs
across 3 `procsup serve` hosts, two host kill-and-restarts and one Redis
restart. Each kill lands while the killed host holds jobs (it is stopped
first, so its pending count is what it held). Exactly one result per job,
extra executions no more than the entries held at the kills, nothing left
behind. Its figures go to stderr, beside
a bare XADD/XREADGROUP/XACK loop against the same server."""

from __future__ import annotations

import random
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis_jobs
import trio
from test_redis_hosts import LEASE, gone, hosts_for, pending_by_consumer

from procsup.redis import open_queue
from procsup.redis._engine import open_engine

JOBS = 10_000


@pytest.fixture(autouse=True)
def soak_only(request: pytest.FixtureRequest) -> None:
    if not request.config.getoption("--soak"):
        pytest.skip("the soak runs with --soak (nox -s soak)")


def report(text: str) -> None:
    print(f"soak: {text}", file=sys.stderr, flush=True)  # nox -s soak runs pytest -s


async def bare_redis_rate(url: str, n: int = 1000) -> float:
    """Jobs per second of a bare XADD + XREADGROUP + XACK loop (one client)."""
    async with open_engine(url, "bare") as engine:
        client = engine.client
        await client.xgroup_create("bare", "g", "$", mkstream=True)
        started = time.perf_counter()
        for i in range(n):
            await client.xadd("bare", {"body": str(i)})
            got = await client.xreadgroup("g", "c", count=1, streams={"bare": ">"})
            (entry,) = got["bare"]
            await client.xack("bare", "g", [entry.identifier])
        rate = n / (time.perf_counter() - started)
        await client.delete(["bare"])
    return rate


async def test_soak(redis_server: Any, tmp_path: Path) -> None:
    exec_log = str(tmp_path / "executions.log")
    rng = random.Random()
    bare = await bare_redis_rate(redis_server.url)
    async with (
        hosts_for(redis_server, tmp_path, exec_log) as hosts,
        open_queue(redis_server.url, "q") as q,
    ):
        live = [await hosts.start("--idle", "2", "--drain-timeout", "5") for _ in range(3)]
        submitted: dict[str, float] = {}
        latencies: list[float] = []
        held_at_kills: list[int] = []
        started = time.perf_counter()
        with trio.fail_after(240):
            async with trio.open_nursery() as nursery:
                ids: list[str] = [""] * JOBS
                # several submitters, so that the queue fills faster than the
                # hosts drain it: every host holds jobs until near the end
                todo_send, todo_recv = trio.open_memory_channel[int](JOBS)
                for i in range(JOBS):
                    todo_send.send_nowait(i)
                todo_send.close()

                async def submitter() -> None:
                    async for i in todo_recv:
                        job = await q.submit(i)
                        submitted[job] = time.perf_counter()
                        ids[i] = job

                async with trio.open_nursery() as submitters:
                    for _ in range(8):
                        submitters.start_soon(submitter)
                # results, in order, by a few waiters
                queue_send, queue_recv = trio.open_memory_channel[tuple[int, str]](JOBS)
                for i, job in enumerate(ids):
                    queue_send.send_nowait((i, job))
                queue_send.close()

                async def waiter() -> None:
                    async for i, job in queue_recv:
                        assert await q.result(job, timeout=120) == i
                        latencies.append(time.perf_counter() - submitted[job])

                for _ in range(20):
                    nursery.start_soon(waiter)
                # early enough that thousands of jobs are still to run after each
                kills = [rng.uniform(0.05, 0.25), rng.uniform(0.3, 0.5)]
                redis_at = rng.uniform(0.15, 0.4)
                plan = sorted([(k, "host") for k in kills] + [(redis_at, "redis")])
                for fraction, what in plan:
                    while len(latencies) < fraction * JOBS:
                        await trio.sleep(0.05)
                    assert len(latencies) < 0.9 * JOBS, "the work ended before the event"
                    if what == "host":
                        victim = live.pop(rng.randrange(len(live)))
                        n = hosts.procs.index(victim)
                        consumer = hosts.consumer(n)
                        # The kill lands while it holds jobs: stopped, the host
                        # can finish nothing, so its pending count is what it
                        # holds when killed (caught empty-handed: go on, retry).
                        with trio.fail_after(20):
                            while True:
                                victim.send_signal(signal.SIGSTOP)
                                held = pending_by_consumer(redis_server).get(consumer, 0)
                                if held > 0:
                                    break
                                victim.send_signal(signal.SIGCONT)
                                await trio.sleep(0.01)
                        pids = hosts.kill(victim)
                        assert held <= 2, "a host held more than its --concurrency"
                        held_at_kills.append(held)
                        assert await gone(pids)
                        live.append(await hosts.start("--idle", "2", "--drain-timeout", "5"))
                        report(f"killed host {n} holding {held} at {len(latencies)} results")
                    else:
                        redis_server.kill()
                        await trio.sleep(LEASE)
                        redis_server.start()
                        report(f"restarted Redis at {len(latencies)} results")
        elapsed = time.perf_counter() - started
        runs = redis_jobs.executions(exec_log)
        extra = len(runs) - JOBS
        assert {e["arg"] for e in runs} == set(range(JOBS))
        assert all(held >= 1 for held in held_at_kills), held_at_kills
        assert 0 <= extra <= sum(held_at_kills)
        stats = await q.statistics()
        assert (stats.length, stats.pending, stats.dead) == (0, 0, 0)
        assert stats.leases_lost >= sum(held_at_kills)  # each was taken back
        one_at_a_time = []  # end to end with an empty queue: the per-job overhead
        for i in range(200):
            before = time.perf_counter()
            assert await q.call(i, timeout=30) == i
            one_at_a_time.append(time.perf_counter() - before)
        one_at_a_time.sort()
        trees = [hosts.tree(p) for p in live]
        for proc in live:
            proc.terminate()
        for proc in live:
            assert await trio.to_thread.run_sync(proc.wait, 30) == 143
        assert all([await gone(t) for t in trees])
    latencies.sort()
    report(
        f"{JOBS} jobs on 3 hosts (--concurrency 2) in {elapsed:.1f}s: {JOBS / elapsed:.0f} jobs/s; "
        f"end to end p50 {statistics.median(latencies) * 1000:.0f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.0f} ms (all submitted at once, "
        f"so mostly queueing); one call at a time: p50 "
        f"{statistics.median(one_at_a_time) * 1000:.1f} ms, "
        f"p99 {one_at_a_time[197] * 1000:.1f} ms; "
        f"{extra} extra executions (bound: held at the kills, {held_at_kills}); "
        f"queue: {stats.leases_lost} leases lost, {stats.redeliveries} redeliveries; "
        f"bare Redis XADD+XREADGROUP+XACK loop, one client: {bare:.0f}/s"
    )
