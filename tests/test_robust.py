"""Issue 10: nothing a job does takes down the pool, a job that never started
is never the caller's failure, and every wait stays bounded. Real processes,
under both start methods."""

from __future__ import annotations

import functools
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import robust_jobs as jobs
import trio
from support import is_gone, until

import procsup

# -- item 7: a worker that leaves its process group ------------------------------


async def test_a_worker_that_leaves_its_group_and_ignores_sigterm_is_killed(
    start_method: str, tmp_path: Path
) -> None:
    pidfile = tmp_path / "helper.pid"
    began = time.monotonic()
    try:
        async with (
            procsup.open_pool(
                idle=1, start_method=start_method, cancel_grace=0.3, shutdown_timeout=0.5
            ) as pool,
            pool.acquire() as worker,
        ):
            pid = worker.pid
            with trio.move_on_after(1.0):
                await worker.run(jobs.leave_group_and_ignore_sigterm, str(pidfile))
            cancelled = time.monotonic() - began
        assert is_gone(pid)
        assert cancelled < 1.0 + 0.3 + 2.0, f"the cancel took {cancelled:.1f}s"
    finally:
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except OSError:
                pass


# -- item 2: a job the worker never began is run elsewhere ---------------------------


def _kill(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        os.kill(pid, sig)


def _idle_pids(pool: procsup.Pool) -> list[int]:
    return [
        m.worker.pid
        for m in pool._members.values()
        if m.worker is not None and m.worker.accepting_jobs
    ]


async def _kill_then_call(
    pool: procsup.Pool, tmp_path: Path, rounds: int, kill: Callable[[], None]
) -> None:
    """Each round: the pool is warm, ``kill()`` (as the OOM killer would, just
    before the calls), then three calls; each runs ("x" mode: at most once)."""
    for round_ in range(rounds):
        await pool.wait_warm()
        kill()
        paths = [tmp_path / f"{round_}-{i}" for i in range(3)]
        async with trio.open_nursery() as nursery:
            for path in paths:
                nursery.start_soon(pool.run, jobs.touch, str(path))
        assert all(path.exists() for path in paths)


async def test_jobs_sent_to_freshly_killed_idle_workers_run_elsewhere_once(
    start_method: str, tmp_path: Path
) -> None:
    async with procsup.open_pool(idle=3, start_method=start_method, backoff_base=0.01) as pool:
        await _kill_then_call(pool, tmp_path, 8, lambda: _kill(_idle_pids(pool)))


async def test_a_dead_workers_job_that_never_began_is_phase_idle(
    start_method: str, tmp_path: Path
) -> None:
    path = tmp_path / "ran"
    async with procsup.open_worker(start_method=start_method) as worker:
        os.kill(worker.pid, signal.SIGKILL)
        with pytest.raises(procsup.WorkerCrashedError) as caught:
            await worker.run(jobs.touch, str(path))
        assert caught.value.phase == "idle", caught.value
    assert not path.exists()


async def test_killing_the_fork_server_and_its_idle_workers_fails_no_call(tmp_path: Path) -> None:
    from support import templates

    def kill_templates() -> None:
        for template in templates():  # with its idle workers, as a cgroup's OOM kill does
            _kill([worker.pid for worker in template.children()] + [template.pid])

    async with procsup.open_pool(idle=3, start_method="forkserver", backoff_base=0.01) as pool:
        await _kill_then_call(pool, tmp_path, 4, kill_templates)


async def test_a_stopped_idle_worker_costs_its_job_nothing(
    start_method: str, tmp_path: Path
) -> None:
    """The job goes to the SIGSTOPped worker, which never takes it: when the
    ping gives up on it, the job runs elsewhere (no WorkerUnresponsiveError)."""
    path = tmp_path / "ran"
    async with procsup.open_pool(
        idle=1, start_method=start_method, ping_interval=0.2, ping_timeout=0.5
    ) as pool:
        await pool.wait_warm()
        (stopped,) = _idle_pids(pool)
        os.kill(stopped, signal.SIGSTOP)
        with trio.fail_after(10):
            await pool.run(jobs.touch, str(path))
        assert path.read_text() != str(stopped)
        assert is_gone(stopped)


# -- item 3: an early cancel stops the job before it begins ------------------------


async def test_a_cancel_that_comes_before_the_job_begins_stops_it_then(
    start_method: str, tmp_path: Path
) -> None:
    """The cancel arrives while the job's arguments unpickle (user code, but
    before the job's body): the job never runs, and nobody waits out
    cancel_grace."""
    path = tmp_path / "ran"
    async with procsup.open_worker(start_method=start_method, cancel_grace=5.0) as worker:
        began = time.monotonic()
        with trio.move_on_after(0.3):
            await worker.run(jobs.touch_after, str(path), jobs.SlowToUnpickle(1.5))
        elapsed = time.monotonic() - began
    assert not path.exists()
    assert elapsed < 1.2, f"the cancel took {elapsed:.1f}s"


# -- item 6: workers that die before their first job ---------------------------------


async def test_workers_that_die_right_after_ready_are_failed_starts_and_bound_run(
    start_method: str, tmp_path: Path
) -> None:
    flag = tmp_path / "recovered"
    async with procsup.open_pool(
        functools.partial(jobs.die_right_after_ready_unless, str(flag)),
        idle=1,
        start_method=start_method,
        acquire_timeout=5.0,
        backoff_base=0.05,
        backoff_cap=0.2,
    ) as pool:
        began = time.monotonic()
        with trio.fail_after(15), pytest.raises(procsup.NoWorkerAvailableError):
            await pool.run(jobs.noop)
        assert time.monotonic() - began < 5.0 + 2.0
        stats = pool.statistics()
        assert stats.start_failures >= 1
        assert stats.jobs_completed == 0
        # Degraded: but the pool's next probe may be warm at this very moment
        # (it is "ok" for the instant before it dies), so wait out that instant.
        await until(lambda: pool.statistics().health == "degraded", timeout=5)
        assert pool.statistics().jobs_completed == 0
        flag.touch()
        with trio.fail_after(10):
            assert await pool.run(jobs.noop) is None
        assert pool.statistics().jobs_completed == 1


# -- item 10: smaller ones -------------------------------------------------------------


async def test_no_start_for_a_caller_that_gave_up(start_method: str, tmp_path: Path) -> None:
    """LiveKit's test_proc_pool_launch_job_raises_when_all_spawns_fail, with an
    initializer that recovers right after: nothing starts for the caller
    that got NoWorkerAvailableError."""
    flag = tmp_path / "recovered"
    async with procsup.open_pool(
        functools.partial(jobs.fail_unless, str(flag)),
        idle=0,
        start_method=start_method,
        max_acquire_attempts=2,
        backoff_base=0.01,
        backoff_cap=0.05,
    ) as pool:
        with pytest.raises(procsup.NoWorkerAvailableError):
            await pool.run(jobs.noop)
        flag.touch()
        await trio.sleep(1.0)
        stats = pool.statistics()
        assert stats.live == 0, stats
        assert stats.starts == stats.start_failures, stats


async def test_jobs_completed_counts_only_jobs_that_returned_or_raised(
    start_method: str,
) -> None:
    async with procsup.open_pool(idle=1, start_method=start_method, cancel_grace=0.2) as pool:
        assert await pool.run(jobs.noop) is None
        with pytest.raises(procsup.SerializationError):
            await pool.run(jobs.touch_after, "unused", lambda: None)  # arguments never pickle
        with trio.move_on_after(0.5):
            await pool.run(time.sleep, 30)  # cancelled
        with pytest.raises(ZeroDivisionError):
            await pool.run(divmod, 1, 0)
        assert pool.statistics().jobs_completed == 2


# -- item 9: waits on the fork server follow the user's settings ----------------------------


async def test_a_hanging_preload_import_is_bounded_by_init_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "hangs_on_import.py").write_text("import time\ntime.sleep(60)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    began = time.monotonic()
    with pytest.raises(procsup.NoWorkerAvailableError) as caught:
        async with procsup.open_pool(
            idle=0,
            start_method="forkserver",
            preload=["hangs_on_import"],
            init_timeout=0.5,
            max_acquire_attempts=2,
            backoff_base=0.01,
        ) as pool:
            await pool.run(jobs.noop)
    elapsed = time.monotonic() - began
    assert elapsed < 2 * 0.5 + 3.0, f"{elapsed:.1f}s"
    assert "init_timeout" in str(caught.value.start_errors[-1])


async def test_a_stopped_fork_server_costs_a_call_init_timeout_not_a_fixed_wait() -> None:
    from support import templates

    async with procsup.open_pool(
        idle=0, start_method="forkserver", init_timeout=0.5, shutdown_timeout=0.5
    ) as pool:
        await pool.run(jobs.noop)  # the template runs
        (template,) = templates()
        template.send_signal(signal.SIGSTOP)
        began = time.monotonic()
        with trio.fail_after(8):
            await pool.run(jobs.noop)  # a new template
        elapsed = time.monotonic() - began
        assert elapsed < 0.5 + 2.5, f"{elapsed:.1f}s"
        assert is_gone(template.pid)


# -- item 5: out of descriptors at a start -------------------------------------------------

_OUT_OF_DESCRIPTORS = """
import json, os, resource, sys
import trio
import procsup
from robust_jobs import noop

method = sys.argv[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

async def main():
    async with procsup.open_pool(
        idle=1, start_method=method, backoff_base=0.01, max_acquire_attempts=2
    ) as pool:
        await pool.wait_warm()
        hog = []
        try:
            while True:
                hog.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        await pool.run(noop)  # the warm worker serves; its replacement cannot start
        try:
            await pool.run(noop)
            error = None
        except procsup.NoWorkerAvailableError as exc:
            error = [str(e) for e in exc.start_errors]
        stats = pool.statistics()
        for fd in hog:
            os.close(fd)
        await pool.run(noop)  # and serves again once descriptors are back
        return {"errors": error, "failures": stats.start_failures, "health": stats.health}

print(json.dumps(trio.run(main)))
"""


def test_running_out_of_descriptors_is_a_failed_start_naming_the_limit(
    start_method: str,
) -> None:
    from support import start_parent

    parent = start_parent(_OUT_OF_DESCRIPTORS, start_method)
    out, _ = parent.communicate(timeout=120)
    assert parent.returncode == 0, out
    got = json.loads(out)
    assert got["errors"], got
    assert all("RLIMIT_NOFILE" in error for error in got["errors"]), got
    assert got["failures"] >= 2
    assert got["health"] == "degraded"


def test_a_thread_limit_is_a_failed_start_naming_the_limit() -> None:
    from procsup._limits import start_failure

    error = start_failure(RuntimeError("can't start new thread"))
    assert isinstance(error, procsup.WorkerStartError)
    assert "RLIMIT_NPROC" in str(error)
    assert start_failure(RuntimeError("something else")) is None
