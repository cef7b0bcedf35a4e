"""A job's timeout, cancellation that keeps the worker, and a cancelled
call that sends nothing: Pool.run, the lent worker and Worker.run, with real
processes."""

from __future__ import annotations

import pickle
from pathlib import Path

import psutil
import pytest
import timed_jobs
import trio

import procsup


async def test_the_timeout_excludes_the_wait_for_a_worker() -> None:
    # One worker: the second job waits ~1 s for it, then runs 1 s; a 1.5 s
    # timeout counted from the call would fail it.
    async with procsup.open_pool(idle=1, max_workers=1, max_jobs=None) as pool:
        await pool.wait_warm()
        results: list[int] = []

        async def one() -> None:
            results.append(await pool.run(timed_jobs.sleep_then_pid, 1.0, timeout=1.5))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one)
            nursery.start_soon(one)
    assert len(results) == 2


async def test_a_timed_out_job_is_stopped_its_worker_reaped_and_the_next_job_runs(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "finished"
    async with procsup.open_pool(idle=1, max_workers=1, max_jobs=None, cancel_grace=0.5) as pool:
        start = trio.current_time()
        with pytest.raises(procsup.JobTimeoutError) as info:
            await pool.run(timed_jobs.sleep_then_touch, 30, str(marker), timeout=0.5)
        assert trio.current_time() - start < 0.5 + 0.5 + 5  # timeout + grace, bounded
        err = info.value
        assert isinstance(err, TimeoutError)
        assert isinstance(err, procsup.WorkerError)
        assert (err.phase, err.timeout, err.setting) == ("job", 0.5, "timeout=0.5s")
        assert err.pid is not None
        assert "timeout=0.5s elapsed" in str(err)
        assert not psutil.pid_exists(err.pid)  # reaped before the error came back
        assert await pool.run(timed_jobs.getpid) != err.pid  # a new worker serves on
    assert not marker.exists()


async def test_a_job_within_its_timeout_returns_normally() -> None:
    async with procsup.open_worker(max_jobs=None) as worker:
        assert await worker.run(timed_jobs.getpid, timeout=5) == worker.pid
        assert await worker.run(timed_jobs.sleep_then_pid, 0.1, timeout=5) == worker.pid


async def test_worker_run_times_out_too() -> None:
    async with procsup.open_worker(max_jobs=None, cancel_grace=0.2) as worker:
        with pytest.raises(procsup.JobTimeoutError) as info:
            await worker.run(timed_jobs.sleep_then_pid, 30, timeout=0.3)
        assert info.value.pid == worker.pid
        assert not worker.alive


async def test_kill_on_cancel_false_returns_at_once_and_keeps_the_worker(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "finished"
    async with procsup.open_pool(idle=1, max_workers=1, max_jobs=None) as pool:
        await pool.wait_warm()
        with trio.move_on_after(0.3) as scope:
            await pool.run(timed_jobs.sleep_then_touch, 1.0, str(marker), kill_on_cancel=False)
        returned = trio.current_time() - scope.deadline
        assert scope.cancelled_caught
        assert returned < 0.05  # the call returned at once
        assert pool.statistics().busy == 1  # the job runs on, in a worker the pool owns
        # The only worker is reused once the job ends (its result dropped).
        pid = await pool.run(timed_jobs.getpid)
        assert marker.read_text() == str(pid)
        stats = pool.statistics()
        assert (stats.starts, stats.busy) == (1, 0)


async def test_kill_on_cancel_false_on_a_worker_waits_for_the_left_job(tmp_path: Path) -> None:
    marker = tmp_path / "finished"
    async with procsup.open_worker(max_jobs=None) as worker:
        with trio.move_on_after(0.2):
            await worker.run(timed_jobs.sleep_then_touch, 0.6, str(marker), kill_on_cancel=False)
        assert worker.alive
        assert await worker.run(timed_jobs.getpid) == worker.pid  # after the left job ended
        assert marker.read_text() == str(worker.pid)


async def test_a_left_job_still_has_its_timeout(tmp_path: Path) -> None:
    marker = tmp_path / "finished"
    async with procsup.open_pool(idle=1, max_workers=1, max_jobs=None, cancel_grace=0.2) as pool:
        await pool.wait_warm()
        first = await pool.run(timed_jobs.getpid)
        with trio.move_on_after(0.1):
            await pool.run(
                timed_jobs.sleep_then_touch, 30, str(marker), timeout=0.5, kill_on_cancel=False
            )
        with trio.fail_after(10):
            second = await pool.run(timed_jobs.getpid)  # a replacement, once it was killed
        assert second != first
        assert not psutil.pid_exists(first)
    assert not marker.exists()


async def test_leaving_the_pool_reaps_a_left_job_within_the_shutdown_bounds(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "finished"
    async with procsup.open_pool(idle=1, max_jobs=None, shutdown_timeout=0.3) as pool:
        await pool.wait_warm()
        with trio.move_on_after(0.1):
            await pool.run(timed_jobs.sleep_then_touch, 30, str(marker), kill_on_cancel=False)
        start = trio.current_time()
    assert trio.current_time() - start < 0.3 + 5
    assert not marker.exists()


async def test_a_call_in_a_cancelled_scope_sends_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    # One worker at most: had a cancelled call stopped it, a new pid would serve.
    async with procsup.open_pool(idle=1, max_workers=1, max_jobs=None) as pool:
        await pool.wait_warm()
        pid = await pool.run(timed_jobs.getpid)
        with trio.CancelScope() as scope:
            scope.cancel()
            await pool.run(timed_jobs.sleep_then_touch, 0, str(marker))
        async with pool.acquire() as lent:
            with trio.CancelScope() as scope:
                scope.cancel()
                await lent.run(timed_jobs.sleep_then_touch, 0, str(marker))
            with trio.CancelScope() as scope:
                scope.cancel()
                await lent.worker.run(timed_jobs.sleep_then_touch, 0, str(marker))
            assert lent.pid == pid  # the worker was not stopped either
        await trio.sleep(0.2)
        assert not marker.exists()
        assert await pool.run(timed_jobs.getpid) == pid


@pytest.mark.parametrize("timeout", [0, -1, float("nan")])
async def test_a_bad_timeout_is_refused_before_anything_starts(timeout: float) -> None:
    async with procsup.open_pool(idle=0) as pool:
        with pytest.raises(ValueError, match="timeout"):
            await pool.run(timed_jobs.getpid, timeout=timeout)
        with pytest.raises(TypeError, match="timeout"):
            await pool.run(timed_jobs.getpid, timeout="1")  # type: ignore[arg-type]
        assert pool.statistics().starts == 0


def test_job_timeout_error_pickles() -> None:
    err = procsup.JobTimeoutError(
        "job did not finish within its timeout", pid=7, phase="job", setting="timeout=2s"
    )
    err.timeout = 2.0
    back = pickle.loads(pickle.dumps(err))
    assert (type(back), back.pid, back.phase, back.timeout, str(back)) == (
        procsup.JobTimeoutError,
        7,
        "job",
        2.0,
        str(err),
    )
