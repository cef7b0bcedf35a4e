"""Pool.drain (stop taking work, let busy jobs finish, reap everything) and
recycle_above_mb (retire a worker that grew after its job), with real processes."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
from pathlib import Path

import drain_jobs
import psutil
import pytest
import trio

import procsup


def _children() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


async def test_drain_lets_short_jobs_finish_and_stops_the_long_one() -> None:
    results: dict[float, object] = {}
    async with procsup.open_pool(idle=3, max_workers=3, start_method="exec") as pool:
        await pool.wait_warm()

        async def one(seconds: float) -> None:
            try:
                results[seconds] = await pool.run(drain_jobs.sleep_then_pid, seconds)
            except procsup.WorkerClosedError as exc:
                results[seconds] = exc

        async with trio.open_nursery() as nursery:
            for seconds in (0.2, 0.4, 5.0):
                nursery.start_soon(one, seconds)
            while pool.statistics().busy < 3:
                await trio.sleep(0.01)
            start = trio.current_time()
            async with trio.open_nursery() as drainers:
                drainers.start_soon(pool.drain, 1)
                while pool.statistics().state == "open":
                    await trio.lowlevel.checkpoint()
                with trio.fail_after(0.1):  # at once, not after the drain
                    with pytest.raises(procsup.PoolClosedError, match="draining"):
                        await pool.run(drain_jobs.sleep_then_pid, 0)
            assert trio.current_time() - start < 1.5
            assert _children() == []
        assert isinstance(results[0.2], int)
        assert isinstance(results[0.4], int)
        assert isinstance(results[5.0], procsup.WorkerClosedError)
        assert "drain" in str(results[5.0])
        assert pool.statistics().state == "closed"
        leaving = trio.current_time()
    assert trio.current_time() - leaving < 0.1


async def test_drain_wakes_waiters_starts_nothing_and_is_idempotent() -> None:
    async with procsup.open_pool(idle=1, max_workers=1, max_jobs=None) as pool:
        await pool.wait_warm()
        errors: list[BaseException] = []

        async def wait_for_a_worker() -> None:
            try:
                async with pool.acquire():
                    pass
            except procsup.PoolClosedError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.run, drain_jobs.sleep_then_pid, 0.3)
            while pool.statistics().busy < 1:
                await trio.sleep(0.01)
            nursery.start_soon(wait_for_a_worker)
            while pool.statistics().waiting < 1:
                await trio.sleep(0.01)
            starts = pool.statistics().starts
            async with trio.open_nursery() as drainers:  # concurrent calls
                drainers.start_soon(pool.drain)
                drainers.start_soon(pool.drain, 10)
            assert len(errors) == 1
        await pool.drain()  # and a later one
        stats = pool.statistics()
        assert (stats.starts, stats.live, stats.state) == (starts, 0, "closed")
        assert pool.closed
        with pytest.raises(procsup.PoolClosedError):
            await pool.wait_warm()


async def test_drain_of_an_idle_pool_with_warming_workers_returns_promptly() -> None:
    async with procsup.open_pool(idle=4, init_timeout=30) as pool:
        with trio.fail_after(5):
            await pool.drain()
        assert pool.statistics().live == 0
    assert _children() == []


@pytest.mark.parametrize("timeout", [0, -1, math.nan, "1"])
async def test_drain_rejects_a_bad_timeout(timeout: object) -> None:
    async with procsup.open_pool(idle=0) as pool:
        with pytest.raises((TypeError, ValueError), match="timeout"):
            await pool.drain(timeout)  # type: ignore[arg-type]
        assert pool.statistics().state == "open"


async def test_a_worker_over_recycle_above_mb_is_replaced_after_its_job() -> None:
    events: list[procsup.PoolEvent] = []
    async with procsup.open_pool(
        idle=1, max_workers=1, max_jobs=None, recycle_above_mb=150, on_event=events.append
    ) as pool:
        first = await pool.run(drain_jobs.grow_then_pid, 200)  # the result is returned
        second = await pool.run(drain_jobs.sleep_then_pid, 0)
        assert second != first
        assert pool.statistics().recycled == 1
        third = await pool.run(drain_jobs.sleep_then_pid, 0)
        assert third == second  # a small worker serves on
    assert [e.pid for e in events if e.kind == "recycled"] == [first]


async def test_a_single_worker_over_recycle_above_mb_retires() -> None:
    async with procsup.open_worker(max_jobs=None, recycle_above_mb=150) as worker:
        await worker.run(drain_jobs.grow_then_pid, 200)
        assert worker.memory_mb is not None
        assert worker.memory_mb > 150
        assert not worker.accepting_jobs
        with pytest.raises(procsup.WorkerClosedError):
            await worker.run(drain_jobs.sleep_then_pid, 0)


EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "drain_service.py"


async def test_the_service_example_drains_on_sigterm_and_exits_143() -> None:
    with trio.fail_after(60):
        process = await trio.lowlevel.open_process(
            [sys.executable, str(EXAMPLE)], stdout=subprocess.PIPE
        )
        try:
            assert process.stdout is not None
            output = b""
            while output.count(b"started") < 2:  # jobs are running
                chunk = await process.stdout.receive_some()
                assert chunk, output
                output += chunk
            process.send_signal(signal.SIGTERM)
            while chunk := await process.stdout.receive_some():
                output += chunk
            assert await process.wait() == 143, output
        finally:
            process.kill()
            await process.wait()
            await process.stdout.aclose()  # type: ignore[union-attr]
    lines = output.decode().splitlines()
    started = {line.split()[1] for line in lines if line.startswith("started")}
    done = {line.split()[1] for line in lines if line.startswith("done")}
    assert started == done  # every running job finished
    assert "draining on SIGTERM" in lines
    assert len(done) < 8  # it did not serve its whole batch
