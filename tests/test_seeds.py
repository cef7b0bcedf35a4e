"""One regression test per seed: the five ways the process pool of a
voice-agent framework (LiveKit Agents' ProcPool) failed, each impossible
here. The seeds, as its tracker tells them:

* 000: pull request #1669, "retry proc acquisition when spawns fail";
* 001: pull request #1768, "make SupervisedProc.initialize() always settle";
* 002: issue #5868, "jobs stall indefinitely when process initialization
  times out";
* 003: pull request #1214 (agents-js), "release initMutex after warming";
* 004: pull request #1512 (agents-js), "port dynamic load-based idle
  process scaling".

The same scenarios run in virtual time, without processes, in
tests/test_pool_logic.py."""

from __future__ import annotations

from pathlib import Path

import helpers
import psutil
import pytest
import trio

import procsup

pytestmark = pytest.mark.usefixtures("each_start_method")


async def test_seed_000_job_does_not_hang_when_every_initialization_fails() -> None:
    """Seed 000: when every spawn failed, the job waited forever on the warmed
    queue and the retry loop was unreachable. Here the waiter is woken when
    the starts it depends on settle, uses an attempt, and gives up after
    ``max_acquire_attempts`` with the start errors."""
    async with procsup.open_pool(helpers.raising_init, idle=2, max_acquire_attempts=3) as pool:
        with trio.fail_after(30), pytest.raises(procsup.NoWorkerAvailableError) as info:
            await pool.run(helpers.noop)
    assert len(info.value.start_errors) == 3
    assert "model file missing" in str(info.value)


async def test_seed_001_init_that_never_answers_is_killed_and_does_not_wedge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seed 001: a child that hung before its first message wedged the pool,
    and the init timeout did not kill it. Here the deadline kills and reaps
    it, frees its start slot, and the pool goes on warming."""
    monkeypatch.setenv("PROCSUP_SLOTS", str(tmp_path))
    hung: list[int] = []

    def on_event(event: procsup.PoolEvent) -> None:
        if event.kind == "start_failed" and event.pid is not None:
            hung.append(event.pid)

    async with procsup.open_pool(
        helpers.first_start_hangs_init,
        idle=1,
        max_concurrent_starts=1,
        init_timeout=0.5,
        on_event=on_event,
    ) as pool:
        with trio.fail_after(30):
            assert await pool.run(helpers.state) == "ok"
    assert len(hung) == 1
    assert not psutil.pid_exists(hung[0])  # killed and reaped, not left hanging


async def test_seed_002_acquisition_is_bounded_when_init_times_out() -> None:
    """Seed 002: with initialization timing out, ``get()`` on the warmed queue
    had no timeout and jobs stalled. Here the caller's wait is bounded by
    ``max_acquire_attempts x init_timeout`` plus spawn overhead."""
    start = trio.current_time()
    async with procsup.open_pool(
        helpers.hanging_init, idle=1, init_timeout=0.3, max_acquire_attempts=2
    ) as pool:
        with pytest.raises(procsup.NoWorkerAvailableError, match=r"init_timeout=0\.3s"):
            await pool.run(helpers.noop)
    assert trio.current_time() - start < 2 * 0.3 + 5


async def test_seed_003_a_running_job_holds_no_warming_lock() -> None:
    """Seed 003: a lock held across a job's lifetime serialised warming, so
    no replacement could warm while a job ran. Here, with a single start slot,
    replacements warm while two long jobs run."""
    async with procsup.open_pool(
        helpers.sleepy_init, idle=2, max_workers=None, max_concurrent_starts=1, max_jobs=None
    ) as pool:
        await pool.wait_warm()
        async with pool.acquire() as a, pool.acquire() as b, trio.open_nursery() as nursery:
            nursery.start_soon(a.run, helpers.sleep_for, 30)
            nursery.start_soon(b.run, helpers.sleep_for, 30)
            with trio.fail_after(10):
                await pool.wait_warm()  # two more warmed behind the running jobs
            stats = pool.statistics()
            assert (stats.busy, stats.idle) == (2, 2)
            nursery.cancel_scope.cancel()


async def test_seed_004_idle_target_direction_and_busy_not_counted_as_idle() -> None:
    """Seed 004: at full load the idle target was set to the maximum, and busy
    processes were counted as pending/idle so no replacement was warmed.
    Here full load means target 0, and busy workers never count."""
    load = 1.0
    async with procsup.open_pool(
        idle=2, max_workers=None, load=lambda: load, load_interval=0.02, max_jobs=None
    ) as pool:
        assert pool.statistics().target_idle == 0
        assert pool.statistics().warming == 0
        load = 0.0
        await pool.wait_warm()
        async with pool.acquire(), pool.acquire():
            await pool.wait_warm()  # the two busy ones do not count as idle
            stats = pool.statistics()
            assert (stats.busy, stats.idle, stats.target_idle) == (2, 2, 2)
