"""Workers with their own event loop (``worker_loop``): real processes, both
start methods, asyncio (and uvloop, when installed) and trio.

uvloop cases are skipped, saying so, only when uvloop is not installed
(``pip install 'procsup[uvloop]'``)."""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import async_jobs
import helpers
import pytest
import trio

import procsup
from procsup import WorkerClosedError, WorkerStartError

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
UVLOOP = pytest.param(
    "uvloop",
    marks=pytest.mark.skipif(
        not HAVE_UVLOOP, reason="uvloop is not installed: pip install 'procsup[uvloop]'"
    ),
)
ASYNCIO_LOOPS = ["asyncio", UVLOOP]
ALL_LOOPS = ["asyncio", UVLOOP, "trio"]


def for_loop(loop: str, name: str) -> Any:
    """The asyncio_* or trio_* variant of an initializer or job."""
    return getattr(async_jobs, f"{'trio' if loop == 'trio' else 'asyncio'}_{name}")


def open_worker(loop: str, start_method: str, initializer: Any = None, **options: Any) -> Any:
    options.setdefault("max_jobs", None)
    return procsup.open_worker(initializer, worker_loop=loop, start_method=start_method, **options)


# -- resources and tasks made by the initializer live on


@pytest.mark.parametrize("loop", ALL_LOOPS)
async def test_twenty_jobs_use_the_listener_the_initializer_opened(
    loop: str, start_method: str
) -> None:
    async with open_worker(loop, start_method, for_loop(loop, "listener_init")) as worker:
        replies = [await worker.run(for_loop(loop, "listener_job")) for _ in range(20)]
        assert worker.jobs_done == 20
    ports = {port for _, port in replies}
    assert len(ports) == 1  # one listener, opened once, by the initializer
    # ... served by the initializer's server, whose count went on across jobs
    assert [reply for reply, _ in replies] == [f"PING{n}".encode() for n in range(1, 21)]


@pytest.mark.parametrize("loop", ASYNCIO_LOOPS)
async def test_an_asyncio_job_with_sleep_gather_and_a_queue_fed_in_the_background(
    loop: str, start_method: str
) -> None:
    async with open_worker(loop, start_method, async_jobs.asyncio_queue_init) as worker:
        first, slept = await worker.run(async_jobs.asyncio_queue_job, 5)
        second, _ = await worker.run(async_jobs.asyncio_queue_job, 5)
    assert slept == "slept"
    assert first == sorted(first)
    assert len(set(first + second)) == 10
    assert min(second) > max(first)  # the feeder kept going between the jobs


@pytest.mark.parametrize("loop", ALL_LOOPS)
async def test_worker_state_and_sync_jobs_run_in_the_loop_thread(
    loop: str, start_method: str
) -> None:
    async with open_worker(loop, start_method, helpers.sleepy_init) as worker:
        assert await worker.run(helpers.state) == {"model": "loaded", "pid": worker.pid}
        assert await worker.run(helpers.add, 2, 3) == 5
        in_main_thread, running = await worker.run(async_jobs.thread_and_loop)
    assert in_main_thread
    assert running == loop


@pytest.mark.parametrize("loop", ALL_LOOPS)
async def test_pings_are_answered_while_the_loop_runs(loop: str, start_method: str) -> None:
    async with open_worker(
        loop, start_method, for_loop(loop, "listener_init"), ping_interval=0.05
    ) as worker:
        with trio.move_on_after(0.4):
            await worker.run(for_loop(loop, "sleep"), 10)
        await trio.sleep(0.2)  # idle: only the loop's background runs
        assert worker.last_ping_rtt is not None
        assert worker.alive
        assert await worker.run(async_jobs.pid) == worker.pid


@pytest.mark.parametrize("loop", ALL_LOOPS)
async def test_background_timers_fire_while_trivial_jobs_run_back_to_back(
    loop: str, start_method: str
) -> None:
    # A job that never suspends, and the next order already there when it
    # ends, still leaves the loop a turn at least every millisecond or so.
    async with open_worker(loop, start_method, for_loop(loop, "ticker_init")) as worker:
        before = await worker.run(async_jobs.ticks)
        deadline = trio.current_time() + 0.5
        while trio.current_time() < deadline:
            await worker.run(async_jobs.async_noop)
        after = await worker.run(async_jobs.ticks)
    assert after - before >= 20  # a 1 ms timer, for 0.5 s


# -- cancellation


@pytest.mark.parametrize("loop", ALL_LOOPS)
async def test_a_cancelled_job_returns_at_once_and_the_worker_goes_on(
    loop: str, start_method: str
) -> None:
    async with open_worker(loop, start_method, for_loop(loop, "listener_init")) as worker:
        await worker.run(for_loop(loop, "listener_job"))
        with trio.move_on_after(0.3) as scope:
            await worker.run(for_loop(loop, "sleep"), 60)
        assert scope.cancelled_caught
        took = trio.current_time() - scope.deadline
        assert took < 0.5
        assert worker.alive
        assert worker.accepting_jobs
        # the same process, with its listener and the server's count
        reply, _ = await worker.run(for_loop(loop, "listener_job"))
        assert reply == b"PING2"
        assert await worker.run(for_loop(loop, "sleep"), 0) == "slept"


@pytest.mark.parametrize("loop", ALL_LOOPS)
async def test_a_job_ignoring_the_cancel_is_killed_after_cancel_grace(
    loop: str, start_method: str
) -> None:
    async with open_worker(loop, start_method, cancel_grace=0.3) as worker:
        with trio.move_on_after(0.2) as scope:
            await worker.run(for_loop(loop, "ignore_cancel"), 30)
        took = trio.current_time() - scope.deadline
        assert 0.3 <= took < 2.0
        assert not worker.alive
        assert worker.returncode == -signal.SIGKILL
        with pytest.raises(WorkerClosedError):
            await worker.run(helpers.noop)


@pytest.mark.parametrize("loop", ALL_LOOPS)
async def test_a_cancelled_sync_job_on_a_loop_worker_retires_it(
    loop: str, start_method: str
) -> None:
    async with open_worker(loop, start_method, cancel_grace=2.0) as worker:
        with trio.move_on_after(0.3) as scope:
            await worker.run(helpers.sleep_for, 60)
        assert trio.current_time() - scope.deadline < 1.5  # interrupted, not killed
        assert not worker.alive
        assert worker.returncode == 0


# -- a background task that crashes


@pytest.mark.parametrize("loop", ALL_LOOPS)
async def test_a_crashing_background_task_is_logged_and_retires_the_worker(
    loop: str, start_method: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with open_worker(loop, start_method, for_loop(loop, "crashing_init")) as worker:
        # a job running when the task crashes (at 0.2 s) still finishes
        assert await worker.run(for_loop(loop, "sleep"), 0.5) == "slept"
        with trio.fail_after(5):
            await worker.wait_exited()
        assert worker.returncode == 0
        with pytest.raises(WorkerClosedError):
            await worker.run(helpers.noop)
    crashes = [r for r in caplog.records if "background boom" in (r.exc_text or "")]
    assert len(crashes) == 1
    record = crashes[0]
    assert record.levelno == logging.ERROR
    assert record.process == worker.pid
    assert f"worker pid={worker.pid}" in record.getMessage()
    assert "crasher" in record.getMessage()
    assert "retires" in record.getMessage()


@pytest.mark.parametrize("loop", ALL_LOOPS)
async def test_pool_replaces_a_worker_retired_by_a_crashing_background_task(
    loop: str, start_method: str
) -> None:
    async with procsup.open_pool(
        for_loop(loop, "crashing_init"),
        idle=1,
        max_workers=1,
        max_jobs=None,
        worker_loop=loop,
        start_method=start_method,
    ) as pool:
        first = await pool.run(async_jobs.pid)
        await trio.sleep(0.5)  # the task crashes at 0.2 s
        second = await pool.run(async_jobs.pid)
    assert first != second


# -- shutdown runs the loop's own


@pytest.mark.parametrize("loop", ALL_LOOPS)
async def test_max_jobs_retirement_runs_the_loop_shutdown(
    loop: str, start_method: str, tmp_path: Path
) -> None:
    init = functools.partial(for_loop(loop, "finally_init"), str(tmp_path))
    async with open_worker(loop, start_method, init, max_jobs=2) as worker:
        await worker.run(async_jobs.async_noop)
        await worker.run(async_jobs.async_noop)
        with trio.fail_after(5):
            await worker.wait_exited()
        assert worker.returncode == 0
    assert (tmp_path / str(worker.pid)).read_text() == "finally ran"


@pytest.mark.parametrize("loop", ALL_LOOPS)
async def test_pool_close_runs_the_loop_shutdown(
    loop: str, start_method: str, tmp_path: Path
) -> None:
    init = functools.partial(for_loop(loop, "finally_init"), str(tmp_path))
    async with procsup.open_pool(
        init, idle=1, max_jobs=None, worker_loop=loop, start_method=start_method
    ) as pool:
        pid = await pool.run(async_jobs.pid)
    # every worker the pool started ran it (the idle target may have added one)
    assert (tmp_path / str(pid)).read_text() == "finally ran"
    assert {(tmp_path / name).read_text() for name in os.listdir(tmp_path)} == {"finally ran"}


# -- options, errors, imports


async def test_worker_loop_must_be_a_known_name() -> None:
    with pytest.raises(ValueError, match="worker_loop must be None or one of"):
        async with procsup.open_worker(worker_loop="gevent"):
            pass


async def test_uvloop_not_installed_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what find_spec sees as not installed
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'procsup\[uvloop\]'"):
        async with procsup.open_pool(worker_loop="uvloop"):
            pass


async def test_worker_nursery_outside_a_trio_worker_says_where_it_works() -> None:
    with pytest.raises(RuntimeError, match="worker_loop='trio'"):
        procsup.worker_nursery()
    async with procsup.open_worker(worker_loop="asyncio") as worker:
        with pytest.raises(RuntimeError, match=r"asyncio\.create_task"):
            await worker.run(procsup.worker_nursery)


@pytest.mark.parametrize("loop", ALL_LOOPS)
async def test_a_background_task_failing_during_the_initializer_fails_the_start(
    loop: str, start_method: str
) -> None:
    with pytest.raises(WorkerStartError, match="background boom"):
        async with open_worker(loop, start_method, for_loop(loop, "crashing_init_at_once")):
            pass


@pytest.mark.parametrize(
    ("loop", "absent"),
    [(None, {"asyncio", "trio"}), ("asyncio", {"trio"}), ("trio", {"asyncio"})],
)
async def test_the_worker_imports_only_the_loop_it_asked_for(
    loop: str | None, absent: set[str], start_method: str
) -> None:
    async with procsup.open_worker(
        helpers.noop, worker_loop=loop, start_method=start_method, max_jobs=None
    ) as worker:
        assert await worker.run(helpers.add, 1, 2) == 3
        loaded = set(await worker.run(helpers.modules_loaded))
    assert not absent & loaded
    assert "procsup._child_loop" in loaded if loop else "procsup._child_loop" not in loaded


# -- the command line

CLI_JOBS = """
import asyncio

import procsup


async def open_client():
    return {"session": asyncio.Event(), "loop": id(asyncio.get_running_loop())}


async def work(x):
    await asyncio.sleep(0.001)
    state = procsup.worker_state()
    return [x * 2, state["loop"] == id(asyncio.get_running_loop())]
"""


# The command, in a process where uvloop cannot be found (installed or not).
HIDE_UVLOOP = """
import sys
sys.modules["uvloop"] = None
from procsup._cli import main
sys.exit(main())
"""


def procsup_run(project: Path, *args: str, stdin: str, hide_uvloop: bool = False) -> Any:
    """``procsup run clijobs_async:work ARGS`` in ``project``, which holds CLI_JOBS."""
    (project / "clijobs_async.py").write_text(CLI_JOBS)
    how = ["-c", HIDE_UVLOOP] if hide_uvloop else ["-m", "procsup"]
    return subprocess.run(
        [sys.executable, *how, "run", "clijobs_async:work", *args],
        cwd=project,
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("loop", ASYNCIO_LOOPS)
def test_procsup_run_with_worker_loop(loop: str, tmp_path: Path) -> None:
    done = procsup_run(
        tmp_path, "--init", "clijobs_async:open_client", "--worker-loop", loop, stdin="1\n2\n3\n"
    )
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in done.stdout.splitlines()]
    # the job ran on the loop the initializer ran on
    assert [r["result"] for r in out] == [[2, True], [4, True], [6, True]]


def test_procsup_run_worker_loop_uvloop_missing_is_a_usage_error(tmp_path: Path) -> None:
    done = procsup_run(tmp_path, "--worker-loop", "uvloop", stdin="1\n", hide_uvloop=True)
    assert done.returncode == 2, done.stderr
    assert "pip install 'procsup[uvloop]'" in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("loop", ALL_LOOPS)
async def test_large_arguments_and_results_on_a_loop_worker(loop: str, start_method: str) -> None:
    big = bytes(range(256)) * 8192  # 2 MiB: past shm_min_bytes, through shared memory
    async with open_worker(loop, start_method) as worker:
        assert await worker.run(async_jobs.async_echo, big) == big
        assert await worker.run(async_jobs.async_echo, [big, 1]) == [big, 1]
