"""The pool's logic below the process boundary: acquisition, warming,
backoff and the load target, over fake workers (tests/fakepool.py) in
virtual time (trio's autojump_clock: each test takes it as an argument, the
way pytest-trio finds a test's clock), so every figure is exact.

The real-process tests (test_pool.py, test_seeds.py) stay: these add the
same scenarios at a speed and precision real processes cannot give.
"""

from __future__ import annotations

import itertools
import math
import operator

import pytest
import seed_scenarios as seeds
import trio
from fakepool import FakeStarts, open_fake_pool
from seed_scenarios import FakePools
from trio.testing import MockClock

import procsup


def noop() -> None:
    return None


# -- the seeds (tests/seed_scenarios.py; test_seeds.py runs them with real processes)


async def test_seed_000_job_does_not_hang_when_every_initialization_fails(
    autojump_clock: MockClock,
) -> None:
    await seeds.seed_000_job_does_not_hang_when_every_initialization_fails(FakePools())


async def test_seed_001_init_that_never_answers_is_killed_and_does_not_wedge(
    autojump_clock: MockClock,
) -> None:
    await seeds.seed_001_init_that_never_answers_is_killed_and_does_not_wedge(FakePools())


async def test_seed_002_acquisition_is_bounded_when_init_times_out(
    autojump_clock: MockClock,
) -> None:
    await seeds.seed_002_acquisition_is_bounded_when_init_times_out(FakePools())


async def test_seed_003_a_running_job_holds_no_warming_lock(autojump_clock: MockClock) -> None:
    await seeds.seed_003_a_running_job_holds_no_warming_lock(FakePools())


async def test_seed_004_idle_target_direction_and_busy_not_counted_as_idle(
    autojump_clock: MockClock,
) -> None:
    await seeds.seed_004_idle_target_direction_and_busy_not_counted_as_idle(FakePools())


# -- acquisition ---------------------------------------------------------------------


async def test_a_waiter_gets_the_first_warm_worker_at_once(autojump_clock: MockClock) -> None:
    starts = FakeStarts(warm=0.7)
    async with open_fake_pool(starts, idle=0) as pool:
        start = trio.current_time()
        assert await pool.run(operator.mul, 6, 7) == 42
        assert trio.current_time() - start == pytest.approx(0.7)
        assert starts.started == 1  # idle=0: one start, for the waiter


async def test_waiters_beyond_max_workers_are_served_in_arrival_order(
    autojump_clock: MockClock,
) -> None:
    starts = FakeStarts(warm=0.1, max_jobs=None)
    order: list[int] = []

    async def hold(pool: procsup.Pool, who: int) -> None:
        async with pool.acquire():
            order.append(who)
            await trio.sleep(1)

    async with (
        open_fake_pool(starts, idle=0, max_workers=1) as pool,
        trio.open_nursery() as nursery,
    ):
        for who in range(4):
            nursery.start_soon(hold, pool, who)
            await trio.sleep(0.01)  # arrive in this order
        await trio.sleep(0.5)
        stats = pool.statistics()
        assert (stats.busy, stats.waiting, stats.warming) == (1, 3, 0)
    assert order == [0, 1, 2, 3]
    assert starts.started == 1  # one worker, passed along


async def test_a_failed_start_in_a_round_that_also_served_a_peer_costs_no_attempt(
    autojump_clock: MockClock,
) -> None:
    # Two waiters, two starts. Start 1 serves one waiter at 1.0; start 2
    # fails at 1.5. For the other waiter that round saw a success (spent on
    # its peer) and a failure: contention, not a failed round. It uses no
    # attempt, and start 3 serves it at 2.0.
    plan = {1: ("ok", 1.0), 2: ("fail", 1.5), 3: ("ok", 0.5)}
    starts = FakeStarts(plan=plan.__getitem__)
    results: list[int] = []
    async with open_fake_pool(
        starts, idle=0, max_concurrent_starts=2, max_acquire_attempts=1
    ) as pool:

        async def job(x: int) -> None:
            results.append(await pool.run(operator.neg, x))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(job, 1)
            nursery.start_soon(job, 2)
        assert trio.current_time() == pytest.approx(2.0)
        assert pool.statistics().start_failures == 1
    assert sorted(results) == [-2, -1]


async def test_a_failed_start_while_a_depended_on_start_is_in_flight_costs_no_attempt(
    autojump_clock: MockClock,
) -> None:
    # The waiter depends on both starts warming when it looked; start 2
    # fails first, but start 1 may still come: it waits, and gets it.
    # idle=1: start 1 is for the idle target, start 2 for the waiter.
    plan = {1: ("ok", 1.0), 2: ("fail", 0.5)}
    starts = FakeStarts(plan=lambda n: plan.get(n, "ok"))
    async with open_fake_pool(starts, idle=1, max_acquire_attempts=1) as pool:
        assert await pool.run(operator.neg, 5) == -5
        assert trio.current_time() == pytest.approx(1.0)


async def test_a_worker_that_died_while_offered_is_skipped(autojump_clock: MockClock) -> None:
    starts = FakeStarts(max_jobs=None)
    async with open_fake_pool(starts, idle=1) as pool:
        await pool.wait_warm()
        starts.workers[0].kill()  # dies idle, still in the ready channel
        assert await pool.run(operator.add, 2, 2) == 4
        assert [w.jobs_done for w in starts.workers][:2] == [0, 1]


async def test_a_job_never_sent_goes_to_another_worker(autojump_clock: MockClock) -> None:
    starts = FakeStarts(max_jobs=None)
    async with open_fake_pool(starts, idle=1) as pool:
        await pool.wait_warm()
        starts.workers[0].dies_before_send = True
        assert await pool.run(operator.add, 1, 2) == 3
        assert [w.jobs_done for w in starts.workers][:2] == [0, 1]


async def test_acquire_timeout_bounds_the_wait(autojump_clock: MockClock) -> None:
    starts = FakeStarts(plan=lambda n: "hang", init_timeout=100)
    async with open_fake_pool(starts, idle=1, acquire_timeout=2.5) as pool:
        start = trio.current_time()
        with pytest.raises(procsup.NoWorkerAvailableError, match=r"acquire_timeout=2\.5s"):
            await pool.run(noop)
        assert trio.current_time() - start == pytest.approx(2.5)


async def test_closing_wakes_a_waiter_with_pool_closed(autojump_clock: MockClock) -> None:
    starts = FakeStarts(plan=lambda n: "hang", init_timeout=100)
    async with trio.open_nursery() as nursery, open_fake_pool(starts, idle=0) as pool:

        async def waiter() -> None:
            with pytest.raises(procsup.PoolClosedError):
                await pool.run(noop)

        nursery.start_soon(waiter)
        await trio.sleep(1)
        assert pool.statistics().waiting == 1
    assert starts.live == 0


# -- warming and backoff ---------------------------------------------------------------


async def test_the_pool_warms_to_its_target_concurrently_within_its_start_slots(
    autojump_clock: MockClock,
) -> None:
    starts = FakeStarts(warm=1.0)
    async with open_fake_pool(starts, idle=5, max_concurrent_starts=2) as pool:
        await pool.wait_warm()
        assert trio.current_time() == pytest.approx(3.0)  # 2 + 2 + 1 starts, 1 s each
        stats = pool.statistics()
        assert (stats.idle, stats.warming, stats.starts) == (5, 0, 5)


async def test_failing_starts_back_off_exponentially_then_recover(
    autojump_clock: MockClock,
) -> None:
    base, cap, warm = 0.1, 1.0, 0.2
    starts = FakeStarts(warm=warm, plan=lambda n: "fail")
    seen: list[procsup.PoolEvent] = []
    async with open_fake_pool(
        starts, idle=1, backoff_base=base, backoff_cap=cap, on_event=seen.append
    ) as pool:
        await trio.sleep(10)
        times = [e.time for e in seen if e.kind == "start"]
        for failures, (before, after) in enumerate(itertools.pairwise(times), start=1):
            delay = min(cap, base * 2 ** (failures - 1))
            # the next start comes when the jittered backoff (half to all of it) ends
            assert warm + 0.5 * delay - 1e-9 <= after - before <= warm + delay + 1e-9
        assert pool.statistics().health == "degraded"
        assert starts.most_live == 1  # one probe at a time
        async with pool.events() as events:
            starts.plan = lambda n: "ok"
            async for event in events:
                if event.kind == "ready":
                    break
        stats = pool.statistics()
        assert (stats.health, stats.consecutive_start_failures) == ("ok", 0)


async def test_wait_warm_gives_up_after_consecutive_failures(autojump_clock: MockClock) -> None:
    starts = FakeStarts(plan=lambda n: "fail")
    async with open_fake_pool(starts, idle=1, max_acquire_attempts=3, backoff_cap=0.5) as pool:
        with pytest.raises(procsup.NoWorkerAvailableError, match="3 starts failed in a row"):
            await pool.wait_warm()


async def test_a_retired_worker_is_replaced(autojump_clock: MockClock) -> None:
    starts = FakeStarts(max_jobs=1)
    async with open_fake_pool(starts, idle=2) as pool:
        await pool.wait_warm()
        for x in range(5):
            assert await pool.run(operator.neg, x) == -x
        await pool.wait_warm()
        stats = pool.statistics()
        assert (stats.starts, stats.idle, stats.jobs_completed) == (7, 2, 5)


# -- the load target ---------------------------------------------------------------------


async def test_the_idle_target_follows_the_polled_load(autojump_clock: MockClock) -> None:
    load = 0.35
    starts = FakeStarts(max_jobs=None)
    async with open_fake_pool(
        starts, idle=4, load=lambda: load, load_threshold=0.7, load_interval=1.0
    ) as pool:
        await pool.wait_warm()
        stats = pool.statistics()
        assert (stats.target_idle, stats.idle) == (math.ceil(4 * 0.5), 2)
        load = 0.0
        assert pool.statistics().target_idle == 2  # until the next poll
        await trio.sleep(1.0)
        assert pool.statistics().target_idle == 4
        await pool.wait_warm()
        assert pool.statistics().idle == 4


async def test_the_default_load_is_busy_over_max_workers(autojump_clock: MockClock) -> None:
    starts = FakeStarts(max_jobs=None)
    async with open_fake_pool(starts, idle=2, max_workers=4, load_threshold=0.7) as pool:
        await pool.wait_warm()
        async with pool.acquire(), pool.acquire():
            stats = pool.statistics()
            assert stats.load == 0.5
            assert stats.target_idle == procsup.idle_target(2, 0.5, 0.7)


async def test_a_load_callable_that_raises_counts_as_full_load(autojump_clock: MockClock) -> None:
    def broken() -> float:
        raise RuntimeError("no metrics")

    starts = FakeStarts()
    async with open_fake_pool(starts, idle=3, load=broken) as pool:
        stats = pool.statistics()
        assert (stats.load, stats.target_idle, stats.warming) == (1.0, 0, 0)
