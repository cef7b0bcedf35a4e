"""A worker past its last answer that exits on its own (``max_jobs``) is
replaced before it is reaped, within a bound: the pool never has more than
``max_workers + PoolOptions().max_exiting`` worker processes, and slots stay in
``[0, max_workers)``, the exiting worker's going to its replacement."""

from __future__ import annotations

import signal

import helpers
import psutil
import trio
from support import worker_pids

import procsup
from procsup._options import PoolOptions

LINGER = 3.0  # seconds each exiting worker takes to exit (under shutdown_timeout)


async def test_a_one_shot_worker_is_replaced_while_it_exits(start_method: str) -> None:
    async with procsup.open_pool(
        idle=1, max_workers=1, max_jobs=1, start_method=start_method
    ) as pool:
        await pool.wait_warm()
        first, first_slot = await pool.run(helpers.linger_at_exit, LINGER)
        second, second_slot = await pool.run(helpers.pid_and_slot)
        assert psutil.pid_exists(first), "the first worker was reaped before it was replaced"
        assert first in worker_pids()  # still exiting, not a zombie
        assert second != first
        assert first_slot == second_slot == 0  # handed on
        assert pool.statistics().closing >= 1


async def test_exiting_workers_beyond_max_workers_stay_bounded(start_method: str) -> None:
    max_workers = 1
    most = 0
    async with procsup.open_pool(
        idle=1, max_workers=max_workers, max_jobs=1, start_method=start_method
    ) as pool:
        await pool.wait_warm()

        async def sample() -> None:
            nonlocal most
            while True:
                most = max(most, len(worker_pids()), pool.statistics().live)
                await trio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample)
            slots = set()
            for _ in range(PoolOptions().max_exiting + 2):  # more exiting workers than the bound
                slots.add((await pool.run(helpers.linger_at_exit, LINGER))[1])
            nursery.cancel_scope.cancel()
        assert slots == {0}
    assert most <= max_workers + PoolOptions().max_exiting


async def test_max_exiting_0_counts_every_worker_until_it_is_reaped() -> None:
    async with procsup.open_pool(
        idle=1, max_workers=1, max_jobs=1, max_exiting=0, start_method="forkserver"
    ) as pool:
        await pool.wait_warm()
        first, _ = await pool.run(helpers.linger_at_exit, 1.0)
        second, _ = await pool.run(helpers.pid_and_slot)
        # the replacement waited for the reap: the first worker is gone
        assert first not in worker_pids()
        assert second != first
        assert pool.statistics().live <= 1


async def test_an_exiting_worker_that_does_not_exit_is_killed_after_shutdown_timeout() -> None:
    # Waited for with a deadline, not cancelled at once (see Pool._release):
    # the deadline is still there, and it kills the worker well before its exit.
    async with (
        procsup.open_pool(
            idle=1, max_workers=1, max_jobs=1, shutdown_timeout=0.5, start_method="forkserver"
        ) as pool,
        pool.events() as events,
    ):
        await pool.wait_warm()
        t0 = trio.current_time()
        pid, _ = await pool.run(helpers.linger_at_exit, 60.0)
        with trio.fail_after(30):  # far below the 60 s it would take to exit
            async for event in events:
                if event.kind == "exited" and event.pid == pid:
                    break
        assert event.returncode == -signal.SIGKILL
        assert trio.current_time() - t0 < 30
