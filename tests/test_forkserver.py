"""The fork-server start method, with real processes: workers forked from a
template that imported ``preload`` once, and nothing left behind whoever dies."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import helpers
import psutil
import pytest
import trio
from support import is_gone, start_parent, until, until_gone

import procsup
import procsup._forkserver
import procsup._worker
from procsup import WorkerCrashedError, WorkerStartError
from procsup._forkserver import ForkServerSpawner
from procsup._options import WorkerOptions
from procsup._worker import supervise

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

ROOT = Path(__file__).parent.parent


# -- where workers come from ---------------------------------------------------


async def test_workers_are_forked_from_one_template_in_their_own_groups() -> None:
    async with procsup.open_pool(idle=2, start_method="forkserver", max_jobs=None) as pool:
        await pool.wait_warm()
        async with pool.acquire() as w1, pool.acquire() as w2:
            assert os.getpgid(w1.pid) == w1.pid
            assert os.getpgid(w2.pid) == w2.pid
            parents = {await w1.run(os.getppid), await w2.run(os.getppid)}
        assert len(parents) == 1
        template = psutil.Process(parents.pop())
        assert template.ppid() == os.getpid()
        assert "procsup._forkserver_child" in " ".join(template.cmdline())
        assert os.getpgid(template.pid) == template.pid  # apart from the workers and us


async def test_preloaded_modules_are_in_the_worker_and_trio_is_not() -> None:
    preload = ["colorsys", "fractions"]
    async with procsup.open_worker(start_method="forkserver", preload=preload) as w:
        modules = await w.run(helpers.modules_loaded)
    assert "colorsys" in modules
    assert "fractions" in modules
    assert "trio" not in modules


async def test_a_preload_module_that_fails_to_import_fails_the_start() -> None:
    with pytest.raises(WorkerStartError) as info:
        async with procsup.open_worker(start_method="forkserver", preload=["no_such_module_xyz"]):
            pass
    err = info.value
    assert "no_such_module_xyz" in str(err)
    assert err.remote_type == "ModuleNotFoundError"
    assert "ModuleNotFoundError" in (err.remote_traceback or "")


async def test_a_preload_module_that_exits_fails_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "exits_on_import.py").write_text("import os\nos._exit(5)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(WorkerStartError, match="exit code 5"):
        async with procsup.open_worker(start_method="forkserver", preload=["exits_on_import"]):
            pass


async def test_a_slow_preload_is_bounded_and_cancellable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "slow_import.py").write_text("import time\ntime.sleep(30)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spawner = ForkServerSpawner(preload=["slow_import"], start_timeout=0.3)
    try:
        with pytest.raises(WorkerStartError, match=r"start_timeout=0\.3s \(init_timeout\)"):
            await spawner.spawn(0, 0)
        with trio.move_on_after(0.3) as scope:
            await spawner.spawn(0, 0)
        assert scope.cancelled_caught
    finally:
        await spawner.aclose()


async def test_a_forked_worker_holds_no_more_descriptors_than_an_exec_one() -> None:
    counts = {}
    for method in ("exec", "forkserver"):
        async with procsup.open_pool(idle=2, start_method=method) as pool:
            await pool.wait_warm()  # two workers: neither may hold the other's channel
            counts[method] = len(await pool.run(os.listdir, "/proc/self/fd"))
    assert counts["forkserver"] == counts["exec"]


# -- behaves as exec does --------------------------------------------------------


async def test_initializer_jobs_and_errors(start_method: str) -> None:
    async with procsup.open_worker(
        helpers.sleepy_init, start_method=start_method, max_jobs=None
    ) as w:
        state = await w.run(helpers.state)
        assert state["pid"] == w.pid
        assert await w.run(helpers.add, 2, 3) == 5
        assert await w.run(helpers.async_double, 21) == 42
        with pytest.raises(ValueError, match="bad input"):
            await w.run(helpers.raise_value_error)
        assert await w.run(helpers.getpid) == w.pid


async def test_initializer_failure(start_method: str) -> None:
    with pytest.raises(WorkerStartError) as info:
        async with procsup.open_worker(helpers.raising_init, start_method=start_method):
            pass
    assert info.value.remote_type == "RuntimeError"
    assert "model file missing" in str(info.value)


@pytest.mark.parametrize(
    ("job", "args", "exit_code", "signal_name"),
    [
        (helpers.exit_now, (3,), 3, None),
        (helpers.log_then_exit, (), 0, None),  # sys.exit() in a job
        (helpers.kill_self, (signal.SIGKILL,), None, "SIGKILL"),
    ],
)
async def test_a_worker_death_reports_its_exit(
    start_method: str,
    job: Callable[..., object],
    args: tuple[object, ...],
    exit_code: int | None,
    signal_name: str | None,
) -> None:
    async with procsup.open_worker(start_method=start_method) as w:
        with pytest.raises(WorkerCrashedError) as info:
            await w.run(job, *args)
    assert info.value.exit_code == exit_code
    assert info.value.signal_name == signal_name


async def test_closing_a_worker_kills_its_process_group(
    start_method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pidfile = tmp_path / "grandchild.pid"
    monkeypatch.setenv("PROCSUP_TEST_PIDFILE", str(pidfile))
    async with procsup.open_worker(start_method=start_method, shutdown_timeout=0.2) as w:
        with trio.move_on_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(w.run, helpers.spawn_grandchild_then_hang)
                while not pidfile.exists() or not pidfile.read_text():
                    await trio.sleep(0.02)
                nursery.cancel_scope.cancel()
    await until_gone(int(pidfile.read_text()), seconds=2)


async def test_a_pool_of_forked_workers_runs_one_shot_jobs() -> None:
    async with procsup.open_pool(idle=2, start_method="forkserver") as pool:
        pids = set()
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(lambda: _collect(pool, pids))
    assert len(pids) == 8  # max_jobs=1: a fresh worker per job


async def _collect(pool: procsup.Pool, pids: set[int]) -> None:
    pids.add(await pool.run(helpers.getpid))


# -- deaths in any order -------------------------------------------------------------


@contextlib.asynccontextmanager
async def _spawner() -> AsyncIterator[ForkServerSpawner]:
    """A fork server of the test's own, closed (its template stopped) on the way out."""
    spawner = ForkServerSpawner()
    try:
        yield spawner
    finally:
        await spawner.aclose()


def _stop_template(spawner: ForkServerSpawner) -> int:
    """SIGSTOP the spawner's template: it forks, reaps and reports nothing."""
    template = spawner.template_pid
    assert template is not None
    os.kill(template, signal.SIGSTOP)
    return template


async def test_killing_the_template_kills_its_workers_and_a_new_one_starts() -> None:
    opts = WorkerOptions(start_method="forkserver", max_jobs=None)
    async with _spawner() as spawner:
        async with supervise(opts, spawner) as w:
            first = spawner.template_pid
            assert first is not None
            assert await w.run(os.getppid) == first
            os.kill(first, signal.SIGKILL)
            with trio.fail_after(5):
                await w.wait_exited()
            assert w.returncode == -signal.SIGKILL  # the status died with the template
        async with supervise(opts, spawner) as w:
            second = await w.run(os.getppid)
            assert second == spawner.template_pid
            assert second != first
    assert is_gone(second)


async def test_a_pool_recovers_when_its_template_is_killed() -> None:
    async with procsup.open_pool(idle=1, start_method="forkserver", max_jobs=None) as pool:
        first = await pool.run(os.getppid)
        worker_pid = await pool.run(os.getpid)
        os.kill(first, signal.SIGKILL)
        await until_gone(worker_pid)
        with trio.fail_after(10):
            second = await pool.run(os.getppid)
        assert second != first


async def test_a_stuck_template_is_replaced_when_it_does_not_report(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(procsup._forkserver, "_REPORT_DEADLINE", 0.3)
    opts = WorkerOptions(start_method="forkserver")
    async with _spawner() as spawner:
        async with supervise(opts, spawner) as w:
            template = _stop_template(spawner)
            with pytest.raises(WorkerCrashedError) as info:
                await w.run(helpers.exit_now, 3)
        assert info.value.signal_name == "SIGKILL"  # the status was lost with the template
        async with supervise(opts, spawner) as w:
            assert await w.run(os.getppid) != template


async def test_a_crash_the_template_is_slow_to_report_is_still_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker's channel closes at its death, but its exit status comes
    from the template: a template too busy to report within the grace
    after the EOF (here: stopped) is no "closed its channel but kept
    running" -- the worker has ended, and the caller gets its crash."""
    monkeypatch.setattr(procsup._worker, "_DRAIN_GRACE", 0.1)
    opts = WorkerOptions(start_method="forkserver")
    async with _spawner() as spawner, supervise(opts, spawner) as w:
        template = _stop_template(spawner)
        try:
            async with trio.open_nursery() as nursery:

                async def run() -> None:
                    with pytest.raises(WorkerCrashedError) as info:
                        await w.run(helpers.exit_now, 3)
                    assert info.value.exit_code == 3, info.value

                nursery.start_soon(run)
                await until(lambda: is_gone(w.pid))  # a zombie of the stopped template
                await trio.sleep(1.0)  # ten times the grace: the EOF's timer has fired
                os.kill(template, signal.SIGCONT)  # it reports the exit now
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(template, signal.SIGCONT)


async def test_closing_the_spawner_stops_the_template() -> None:
    opts = WorkerOptions(start_method="forkserver")
    async with _spawner() as spawner, supervise(opts, spawner) as w:
        template = spawner.template_pid
        await w.run(helpers.noop)
    assert template is not None
    assert is_gone(template)
    with pytest.raises(WorkerStartError, match="closed"):
        await spawner.spawn(0, 0)


_PARENT_SCRIPT = """
import json, os, sys, trio, procsup

async def main():
    async with procsup.open_pool(idle=2, start_method="forkserver", max_jobs=None) as pool:
        await pool.wait_warm()
        async with pool.acquire() as a, pool.acquire() as b:
            pids = [await a.run(os.getppid), a.pid, b.pid]
            print(json.dumps(pids), flush=True)
            await trio.sleep(3600)

trio.run(main)
"""


@contextlib.contextmanager
def _subreaper() -> Iterator[None]:
    """Adopt orphaned descendants while inside, so the test can reap them."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_child_subreaper = 36
    before = {child.pid for child in psutil.Process().children()}
    if prctl(pr_set_child_subreaper, 1, 0, 0, 0) != 0:
        pytest.skip("PR_SET_CHILD_SUBREAPER is not available")
    try:
        yield
    finally:
        prctl(pr_set_child_subreaper, 0, 0, 0, 0)
        # Reap whatever was adopted meanwhile, listed by the test or not: an
        # adopted zombie would otherwise stay our child for the whole session.
        for child in psutil.Process().children():
            if child.pid not in before:
                with contextlib.suppress(OSError):
                    os.kill(child.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(child.pid, 0)


def _reaped_within(pids: list[int], seconds: float) -> list[int]:
    """Reap the adopted ``pids`` as they end; return those still running."""
    deadline = time.monotonic() + seconds
    left = list(pids)
    while left and time.monotonic() < deadline:
        for pid in list(left):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not adopted (yet): look at it instead
                done = pid if not psutil.pid_exists(pid) else 0
            if done:
                left.remove(pid)
        time.sleep(0.02)
    return left


def test_sigkill_of_the_parent_leaves_no_template_or_worker() -> None:
    with _subreaper():
        parent = start_parent(_PARENT_SCRIPT)
        try:
            assert parent.stdout is not None
            pids = json.loads(parent.stdout.readline())
        finally:
            parent.kill()
            parent.wait()
            if parent.stdout is not None:
                parent.stdout.close()
        left = _reaped_within(pids, seconds=2.0)
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        _reaped_within(left, seconds=5.0)
    assert not left, f"still running 2 s after the parent's SIGKILL: {left}"
