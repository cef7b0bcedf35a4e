"""The five seeds, one scenario each, written once and run twice: over real
processes (tests/test_seeds.py) and over fake workers in virtual time
(tests/test_pool_logic.py). They are the five ways the process pool of a
voice-agent framework (LiveKit Agents' ProcPool) failed, each impossible
here. The seeds, as its tracker tells them:

* 000: pull request #1669, "retry proc acquisition when spawns fail";
* 001: pull request #1768, "make SupervisedProc.initialize() always settle";
* 002: issue #5868, "jobs stall indefinitely when process initialization
  times out";
* 003: pull request #1214 (agents-js), "release initMutex after warming";
* 004: pull request #1512 (agents-js), "port dynamic load-based idle
  process scaling".

A scenario takes its :class:`Pools`: :class:`RealPools` (never under
autojump_clock) or :class:`FakePools` (only under it). What only one kind
can show is asked of the ``Pools``: exact virtual times from the fakes,
that a pid is gone from the real ones.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Literal

import helpers
import psutil
import pytest
import trio
from fakepool import FakeStarts, open_fake_pool
from trio.testing import MockClock

import procsup

# What every start's initializer does: raises ("model file missing"); the
# first one hangs, later ones are ready at once; every one hangs; takes a
# while (a model's load); nothing (no initializer).
Init = Literal["raises", "first_hangs", "hangs", "slow", None]


class Pools:
    """Opens a scenario's pool, and checks what depends on its workers."""

    noop = staticmethod(helpers.noop)
    # A long job's function and argument: it runs until the scenario cancels it.
    long_job: tuple[Callable[[float], Any], float]
    # A job that returns what "first_hangs"'s initializer returned: "ok".
    init_result: Callable[[], Any]

    def open(self, init: Init, **options: Any) -> AbstractAsyncContextManager[procsup.Pool]:
        """The pool of ``open_pool(options)`` whose starts do what ``init`` says."""
        raise NotImplementedError

    def took(self, seconds: float, *, exactly: float, at_most: float) -> None:
        """Assert how long a step took: ``exactly`` in virtual time, less
        than ``at_most`` with real processes."""
        raise NotImplementedError

    def gone(self, pid: int) -> bool:
        """Whether the process ``pid`` no longer exists (killed and reaped)."""
        raise NotImplementedError

    def none_left(self) -> None:
        """Assert that no process of the pool exists, once it is closed."""
        raise NotImplementedError


class RealPools(Pools):
    """``procsup.open_pool``, with the initializers of tests/helpers.py."""

    long_job = (helpers.sleep_for, 30)
    init_result = staticmethod(helpers.state)

    _INITS = {
        "raises": helpers.raising_init,
        "first_hangs": helpers.first_start_hangs_init,  # needs PROCSUP_SLOTS set
        "hangs": helpers.hanging_init,
        "slow": helpers.sleepy_init,
        None: None,
    }

    @asynccontextmanager
    async def open(self, init: Init, **options: Any) -> AsyncIterator[procsup.Pool]:
        assert not isinstance(trio.lowlevel.current_clock(), MockClock), "never with a real child"
        async with procsup.open_pool(self._INITS[init], **options) as pool:
            yield pool

    def took(self, seconds: float, *, exactly: float, at_most: float) -> None:
        assert seconds < at_most

    def gone(self, pid: int) -> bool:
        return not psutil.pid_exists(pid)

    def none_left(self) -> None:
        pass  # tests/conftest.py's guard fails a test that leaves a child behind


class FakePools(Pools):
    """tests/fakepool.py's pool: init_timeout and max_jobs go to the fake starts."""

    long_job = (trio.sleep, 30)
    init_result = staticmethod(lambda: "ok")  # a fake worker keeps no state

    _PLANS: dict[Init, dict[str, Any]] = {
        "raises": {"plan": lambda n: "fail"},
        "first_hangs": {"warm": 0.1, "plan": lambda n: "hang" if n == 1 else "ok"},
        "hangs": {"plan": lambda n: "hang"},
        "slow": {"warm": 1.0},
        None: {},
    }

    def __init__(self) -> None:
        self.starts = FakeStarts()

    @asynccontextmanager
    async def open(self, init: Init, **options: Any) -> AsyncIterator[procsup.Pool]:
        starts = {
            name: options.pop(name) for name in ("init_timeout", "max_jobs") if name in options
        }
        self.starts = FakeStarts(**self._PLANS[init], **starts)
        async with open_fake_pool(self.starts, **options) as pool:
            yield pool

    def took(self, seconds: float, *, exactly: float, at_most: float) -> None:
        assert seconds == pytest.approx(exactly)

    def gone(self, pid: int) -> bool:
        return pid not in self.starts.live_pids

    def none_left(self) -> None:
        assert self.starts.live == 0


async def seed_000_job_does_not_hang_when_every_initialization_fails(pools: Pools) -> None:
    """Seed 000: when every spawn failed, the job waited forever on the warmed
    queue and the retry loop was unreachable. Here the waiter is woken when
    the starts it depends on settle, uses an attempt, and gives up after
    ``max_acquire_attempts`` with the start errors."""
    async with pools.open("raises", idle=2, max_acquire_attempts=3) as pool:
        with trio.fail_after(30), pytest.raises(procsup.NoWorkerAvailableError) as info:
            await pool.run(pools.noop)
    assert len(info.value.start_errors) == 3
    assert "model file missing" in str(info.value)


async def seed_001_init_that_never_answers_is_killed_and_does_not_wedge(pools: Pools) -> None:
    """Seed 001: a child that hung before its first message wedged the pool,
    and the init timeout did not kill it. Here the deadline kills and reaps
    it, frees its start slot, and the pool goes on warming."""
    hung: list[int] = []

    def on_event(event: procsup.PoolEvent) -> None:
        if event.kind == "start_failed" and event.pid is not None:
            hung.append(event.pid)

    start = trio.current_time()
    async with pools.open(
        "first_hangs", idle=1, max_concurrent_starts=1, init_timeout=0.5, on_event=on_event
    ) as pool:
        with trio.fail_after(30):
            assert await pool.run(pools.init_result) == "ok"
        # the hung start held the only slot until its deadline, then the next warmed
        pools.took(trio.current_time() - start, exactly=0.5 + 0.1, at_most=30)
        assert pool.statistics().start_failures == 1
    assert len(hung) == 1
    assert pools.gone(hung[0])  # killed and reaped, not left hanging
    pools.none_left()


async def seed_002_acquisition_is_bounded_when_init_times_out(pools: Pools) -> None:
    """Seed 002: with initialization timing out, ``get()`` on the warmed queue
    had no timeout and jobs stalled. Here the caller's wait is bounded by
    ``max_acquire_attempts x init_timeout`` plus spawn overhead (in virtual
    time, exactly: no backoff for a waiter's own start)."""
    start = trio.current_time()
    async with pools.open("hangs", idle=1, init_timeout=0.3, max_acquire_attempts=2) as pool:
        with pytest.raises(procsup.NoWorkerAvailableError, match=r"init_timeout=0\.3s"):
            await pool.run(pools.noop)
        pools.took(trio.current_time() - start, exactly=2 * 0.3, at_most=2 * 0.3 + 5)
    pools.took(trio.current_time() - start, exactly=2 * 0.3, at_most=2 * 0.3 + 5)


async def seed_003_a_running_job_holds_no_warming_lock(pools: Pools) -> None:
    """Seed 003: a lock held across a job's lifetime serialised warming, so
    no replacement could warm while a job ran. Here, with a single start slot,
    replacements warm while two long jobs run."""
    async with pools.open(
        "slow", idle=2, max_workers=None, max_concurrent_starts=1, max_jobs=None
    ) as pool:
        await pool.wait_warm()
        async with pool.acquire() as a, pool.acquire() as b, trio.open_nursery() as nursery:
            nursery.start_soon(a.run, *pools.long_job)
            nursery.start_soon(b.run, *pools.long_job)
            began = trio.current_time()
            with trio.fail_after(10):
                await pool.wait_warm()  # two more warmed, one after the other, behind the jobs
            pools.took(trio.current_time() - began, exactly=2 * 1.0, at_most=10)
            stats = pool.statistics()
            assert (stats.busy, stats.idle) == (2, 2)
            nursery.cancel_scope.cancel()


async def seed_004_idle_target_direction_and_busy_not_counted_as_idle(pools: Pools) -> None:
    """Seed 004: at full load the idle target was set to the maximum, and busy
    processes were counted as pending/idle so no replacement was warmed.
    Here full load means target 0, and busy workers never count."""
    load = 1.0
    async with pools.open(
        None, idle=2, max_workers=None, load=lambda: load, load_interval=0.02, max_jobs=None
    ) as pool:
        assert pool.statistics().target_idle == 0
        assert pool.statistics().warming == 0
        load = 0.0
        await pool.wait_warm()
        async with pool.acquire(), pool.acquire():
            await pool.wait_warm()  # the two busy ones do not count as idle
            stats = pool.statistics()
            assert (stats.busy, stats.idle, stats.target_idle) == (2, 2, 2)


SEEDS = [
    seed_000_job_does_not_hang_when_every_initialization_fails,
    seed_001_init_that_never_answers_is_killed_and_does_not_wedge,
    seed_002_acquisition_is_bounded_when_init_times_out,
    seed_003_a_running_job_holds_no_warming_lock,
    seed_004_idle_target_direction_and_busy_not_counted_as_idle,
]
