"""The warm pool: warming, acquisition that never hangs, scaling, teardown."""

from __future__ import annotations

import functools
import logging
import os
import random
import signal
import time
from contextlib import AsyncExitStack
from pathlib import Path

import helpers
import psutil
import pytest
import trio
from support import children, until, worker_pids

import procsup

pytestmark = pytest.mark.usefixtures("each_start_method")


async def test_run_uses_a_fresh_warm_worker_per_job() -> None:
    async with procsup.open_pool(helpers.sleepy_init, idle=2) as pool:
        await pool.wait_warm()
        pids = [await pool.run(helpers.getpid) for _ in range(4)]
        assert len(set(pids)) == 4
        assert os.getpid() not in pids


async def test_open_pool_returns_at_once_and_warms_in_background() -> None:
    async with procsup.open_pool(helpers.sleep_1s_init, idle=2) as pool:
        stats = pool.statistics()
        assert stats.idle == 0
        assert stats.warming == 2
        await pool.wait_warm()
        stats = pool.statistics()
        assert (stats.idle, stats.warming, stats.starts, stats.health) == (2, 0, 2, "ok")


async def test_warming_runs_in_parallel(tmp_path: Path) -> None:
    """idle=4, max_concurrent_starts=4, a 1 s initializer: the four
    initializers run at once, all within well under 2 s. Timed in the workers:
    the interpreters' start-up (seconds on a loaded machine) is not warming."""
    windows = tmp_path / "windows"
    initializer = functools.partial(helpers.timed_1s_init, str(windows))
    async with procsup.open_pool(initializer, idle=4, max_concurrent_starts=4) as pool:
        await pool.wait_warm()
    runs = [[float(t) for t in line.split()] for line in windows.read_text().splitlines()]
    assert len(runs) == 4
    begins, ends = [begin for begin, _ in runs], [end for _, end in runs]
    assert max(begins) < min(ends), (
        "an initializer began after another ended: starts were serialised"
    )
    elapsed = max(ends) - min(begins)
    assert elapsed < 1.9, f"warming 4 took {elapsed:.2f}s: starts were serialised"


async def test_start_slots_bound_concurrent_warming() -> None:
    peak = in_slot = 0

    def on_event(event: procsup.PoolEvent) -> None:
        nonlocal peak, in_slot
        in_slot += {"start": 1, "ready": -1, "start_failed": -1}.get(event.kind, 0)
        peak = max(peak, in_slot)

    async with procsup.open_pool(
        helpers.sleepy_init, idle=4, max_concurrent_starts=1, on_event=on_event
    ) as pool:
        await pool.wait_warm()
    assert peak <= 1


async def test_acquire_lends_a_worker_for_a_session() -> None:
    async with procsup.open_pool(idle=1, max_jobs=None) as pool:
        async with pool.acquire() as worker:
            assert await worker.run(helpers.getpid) == worker.pid
            assert await worker.run(helpers.getpid) == worker.pid
            assert pool.statistics().busy == 1
        assert pool.statistics().busy == 0
        with pytest.raises(RuntimeError, match="given back"):
            await worker.run(helpers.noop)


@pytest.mark.parametrize(
    ("initializer", "expected"),
    [
        (helpers.raising_init, "RuntimeError: model file missing"),
        (helpers.exiting_init, "exit code 7"),
        (helpers.hanging_init, "init_timeout=0.5s elapsed"),
    ],
    ids=["raises", "exits", "hangs"],
)
async def test_acquire_never_hangs_when_every_start_fails(
    initializer: object, expected: str
) -> None:
    start = trio.current_time()
    async with procsup.open_pool(initializer, idle=2, init_timeout=0.5) as pool:
        with pytest.raises(procsup.NoWorkerAvailableError) as info:
            await pool.run(helpers.noop)
        stats = pool.statistics()
    # bounded: attempts x init_timeout plus spawn overheads
    assert trio.current_time() - start < 3 * 0.5 + 5
    assert expected in str(info.value)
    assert len(info.value.start_errors) == 3
    assert all(isinstance(e, procsup.WorkerStartError) for e in info.value.start_errors)
    assert stats.health == "degraded"
    assert isinstance(stats.last_start_error, procsup.WorkerStartError)
    assert not children()


async def test_an_attempt_waits_only_for_the_starts_warming_now() -> None:
    """idle=6 queues six starts behind one start slot. A hanging initializer
    must cost the acquirer one init_timeout per attempt, not one per queued
    start: an attempt depends on the starts holding a slot."""
    start = trio.current_time()
    async with procsup.open_pool(
        helpers.hanging_init,
        idle=6,
        max_concurrent_starts=1,
        init_timeout=0.5,
        max_acquire_attempts=1,
    ) as pool:
        with pytest.raises(procsup.NoWorkerAvailableError):
            await pool.run(helpers.noop)
        waited = trio.current_time() - start
    # The promise: attempts x init_timeout, plus 1 s. Waiting for the queue
    # would take 7 x 0.5 s.
    assert waited < 1 * 0.5 + 1


async def test_acquire_timeout_bounds_the_wait() -> None:
    async with procsup.open_pool(helpers.hanging_init, idle=0, acquire_timeout=0.3) as pool:
        with pytest.raises(procsup.NoWorkerAvailableError, match=r"acquire_timeout=0\.3s"):
            await pool.run(helpers.noop)


async def test_a_failing_peer_start_does_not_burn_an_attempt(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One attempt allowed; of two starts in flight the first fails at once and
    the second succeeds later: the waiter must get the second."""
    monkeypatch.setenv("PROCSUP_SLOTS", str(tmp_path))
    async with procsup.open_pool(
        helpers.first_start_fails_init, idle=2, max_concurrent_starts=2, max_acquire_attempts=1
    ) as pool:
        assert await pool.run(helpers.getpid) > 0
        assert pool.statistics().start_failures == 1


async def test_cancelled_acquirers_never_lose_a_worker() -> None:
    """100 acquirers cancelled at random moments; afterwards jobs run and counts add up."""
    rng = random.Random(1234)
    async with procsup.open_pool(idle=3, max_workers=6, max_jobs=None) as pool:
        await pool.wait_warm()
        async with trio.open_nursery() as nursery:
            for _ in range(100):

                async def acquirer(delay: float = rng.uniform(0, 0.3)) -> None:
                    with trio.move_on_after(delay):
                        async with pool.acquire() as worker:
                            await worker.run(helpers.sleep_for, rng.uniform(0, 0.05))

                nursery.start_soon(acquirer)
        stats = pool.statistics()
        assert stats.busy == 0
        assert stats.waiting == 0
        assert stats.live <= 6
        assert stats.idle + stats.warming + stats.closing == stats.live
        results = [await pool.run(helpers.add, i, 1) for i in range(5)]
        assert results == [1, 2, 3, 4, 5]
        await pool.wait_warm()
        # Starts made for the cancelled acquirers still run to the end (a start
        # is never abandoned), and count as warming before their process exists
        # (queued for a start slot): compare processes with counts once none is
        # in flight. A lost or uncounted worker still fails this.
        await until(lambda: (s := pool.statistics()).warming == 0 and s.closing == 0)
        assert len(worker_pids()) == pool.statistics().live


async def test_dead_idle_workers_are_replaced_and_never_handed_out() -> None:
    async with procsup.open_pool(idle=3) as pool:
        await pool.wait_warm()
        victims = worker_pids()
        async with pool.events() as events:
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            # A killed process is dead once its pidfd fires; the pool hears of
            # it through the same wakeup (SIGKILL itself is asynchronous).
            exited: set[int] = set()
            async for event in events:
                if event.kind == "exited" and event.pid in victims:
                    assert event.returncode == -signal.SIGKILL
                    exited.add(event.pid)
                    if exited == victims:
                        break
        with trio.fail_after(10):
            pid = await pool.run(helpers.getpid)
        assert pid not in victims
        await pool.wait_warm()
        assert pool.statistics().idle == 3


async def test_idle_target_follows_load() -> None:
    load = 0.0
    # unbounded: the five acquirers below hold five workers at once
    pool_cm = procsup.open_pool(idle=4, max_workers=None, load=lambda: load, load_interval=0.02)
    async with pool_cm as pool:
        await pool.wait_warm()
        assert pool.statistics().target_idle == 4
        load = 0.35
        await until(lambda: pool.statistics().target_idle == 2)
        load = 0.9
        await until(lambda: pool.statistics().target_idle == 0)
        # waiting acquirers still get starts when the target is 0
        async with AsyncExitStack() as stack:
            workers = [await stack.enter_async_context(pool.acquire()) for _ in range(5)]
            assert len({w.pid for w in workers}) == 5


async def test_busy_workers_do_not_count_towards_the_idle_target() -> None:
    async with procsup.open_pool(idle=2, max_workers=None, max_jobs=None) as pool:
        await pool.wait_warm()
        async with pool.acquire(), pool.acquire():
            # both idle workers are busy now: two more must warm
            await pool.wait_warm()
            stats = pool.statistics()
            assert (stats.busy, stats.idle) == (2, 2)


async def test_default_load_is_busy_over_max_workers() -> None:
    async with procsup.open_pool(idle=2, max_workers=4, max_jobs=None, load_threshold=0.5) as pool:
        await pool.wait_warm()
        async with pool.acquire():
            assert pool.statistics().load == 0.25
            assert pool.statistics().target_idle == 1
            async with pool.acquire():
                assert pool.statistics().target_idle == 0


async def test_max_workers_caps_live_children_and_waiters_are_fifo() -> None:
    order: list[int] = []
    release = trio.Event()
    async with procsup.open_pool(idle=0, max_workers=1, max_jobs=None) as pool:

        async def holder() -> None:
            async with pool.acquire():
                await release.wait()

        async def waiter(i: int) -> None:
            async with pool.acquire():
                order.append(i)
                assert pool.statistics().live == 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(holder)
            await until(lambda: pool.statistics().busy == 1)
            for i in range(4):
                nursery.start_soon(waiter, i)
                await until(lambda i=i: pool.statistics().waiting == i + 1)
            assert pool.statistics().live == 1
            release.set()
    assert order == [0, 1, 2, 3]


async def test_crash_loop_backs_off(caplog: pytest.LogCaptureFixture) -> None:
    """A broken initializer kept for 10 s: dozens of starts, not thousands."""
    caplog.set_level(logging.WARNING, logger="procsup")
    cpu_before = psutil.Process().cpu_times()
    async with procsup.open_pool(helpers.raising_init, idle=4, backoff_cap=2.0) as pool:
        await trio.sleep(10)
        async with pool.events() as events:
            # A start in flight counts in starts but not yet in the failures:
            # wait for its failure (subscribed first, so none is missed).
            while (stats := pool.statistics()).starts != stats.start_failures:
                async for event in events:
                    if event.kind == "start_failed":
                        break
    cpu = psutil.Process().cpu_times()
    parent_cpu = (cpu.user + cpu.system) - (cpu_before.user + cpu_before.system)
    assert 4 <= stats.starts <= 40
    assert stats.consecutive_start_failures == stats.start_failures == stats.starts
    assert stats.health == "degraded"
    assert "model file missing" in str(stats.last_start_error)
    assert len(caplog.records) <= 2 * stats.starts
    assert parent_cpu < 5.0  # not spinning


async def test_first_success_resets_the_backoff(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    outage = tmp_path / "outage"
    outage.touch()
    monkeypatch.setenv("PROCSUP_FLAKY", str(outage))
    async with procsup.open_pool(
        helpers.flaky_init, idle=1, backoff_base=0.05, backoff_cap=0.2
    ) as pool:
        await until(lambda: pool.statistics().start_failures >= 2)
        assert pool.statistics().health == "degraded"
        outage.unlink()
        await until(lambda: pool.statistics().idle == 1)
        stats = pool.statistics()
        assert stats.health == "ok"
        assert stats.consecutive_start_failures == 0


@pytest.mark.parametrize("how", ["normally", "by an exception", "by cancellation"])
async def test_leaving_the_block_leaves_no_child(how: str) -> None:
    with trio.move_on_after(1.5 if how == "by cancellation" else 60):
        try:
            async with procsup.open_pool(
                helpers.sleepy_init, idle=2, max_workers=None, max_jobs=None
            ) as pool:
                await pool.wait_warm()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(pool.run, helpers.sleep_for, 60)  # busy
                    nursery.start_soon(pool.run, helpers.hanging_init)  # busy too
                    await until(lambda: pool.statistics().busy == 2)
                    # and one warming
                    assert pool.statistics().warming >= 1
                    if how == "by an exception":
                        raise KeyError("boom")
                    if how == "normally":
                        nursery.cancel_scope.cancel()
                    else:
                        await trio.sleep_forever()
        except* KeyError:
            assert how == "by an exception"
        except* procsup.WorkerClosedError:
            pass
    assert not children()
    with pytest.raises(procsup.PoolClosedError):
        await pool.run(helpers.noop)


async def test_pool_close_wakes_waiters_with_pool_closed() -> None:
    async with (
        trio.open_nursery() as outer,
        procsup.open_pool(helpers.hanging_init, idle=0, init_timeout=30) as pool,
    ):

        async def waiter() -> None:
            with pytest.raises(procsup.PoolClosedError):
                await pool.run(helpers.noop)

        outer.start_soon(waiter)
        await until(lambda: pool.statistics().waiting == 1)
    assert not children()


async def test_lifecycle_events_as_callback_and_async_iterator(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="procsup.pool")
    seen: list[str] = []
    async with (
        procsup.open_pool(idle=1, on_event=lambda e: seen.append(e.kind)) as pool,
        pool.events() as events,
    ):
        await pool.run(helpers.getpid)
        kinds = []
        async for event in events:
            kinds.append(event.kind)
            if event.kind == "exited":
                assert event.returncode == 0
                break
    assert {"start", "ready", "job_started", "job_finished", "exited"} <= set(seen) | {"start"}
    assert "job_finished" in kinds
    assert any("job finished" in r.getMessage() for r in caplog.records)


async def test_pool_keeps_serving_after_job_errors_and_crashes() -> None:
    async with procsup.open_pool(idle=2) as pool:
        with pytest.raises(ValueError):
            await pool.run(helpers.raise_value_error)
        with pytest.raises(procsup.WorkerCrashedError):
            await pool.run(helpers.exit_now, 5)
        assert await pool.run(helpers.add, 2, 2) == 4


async def test_bad_pool_arguments_fail_before_any_process_starts() -> None:
    for kwargs, exc in [
        ({"idle": -1}, ValueError),
        ({"idle": "4"}, TypeError),
        ({"max_workers": 0}, ValueError),
        ({"max_acquire_attempts": 0}, ValueError),
        ({"acquire_timeout": -1}, ValueError),
        ({"load_threshold": 1.5}, ValueError),
        ({"load": 0.5}, TypeError),
        ({"start_method": "telepathy"}, ValueError),
    ]:
        with pytest.raises(exc):
            async with procsup.open_pool(**kwargs):  # type: ignore[arg-type]
                pass
    assert not children()


async def test_many_jobs_concurrently() -> None:
    start = time.monotonic()
    async with procsup.open_pool(idle=2) as pool:
        results: list[int] = []
        async with trio.open_nursery() as nursery:
            for i in range(30):

                async def one(i: int = i) -> None:
                    results.append(await pool.run(helpers.add, i, i))

                nursery.start_soon(one)
    assert sorted(results) == [2 * i for i in range(30)]
    assert time.monotonic() - start < 60
