"""The supervised worker: one child process, warmed, used, always torn down."""

from __future__ import annotations

import functools
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import helpers
import psutil
import pytest
import trio
from support import start_parent, until_gone, wait_gone

import procsup

pytestmark = pytest.mark.usefixtures("each_start_method")

HERE = Path(__file__).parent


async def test_runs_a_job_and_returns_the_result() -> None:
    async with procsup.open_worker() as worker:
        assert worker.pid != os.getpid()
        assert await worker.run(helpers.add, 2, 3) == 5


async def test_child_is_a_fresh_interpreter_on_a_private_socketpair() -> None:
    async with procsup.open_worker() as worker:
        proc = psutil.Process(worker.pid)
        # spawned by us (exec) or forked by the pool's template (forkserver)
        assert proc.ppid() == os.getpid() or proc.parent().ppid() == os.getpid()
        assert proc.cmdline()[0] == sys.executable
        # No listening socket, no path on disk: only unnamed unix sockets.
        for conn in proc.net_connections(kind="all"):
            assert conn.status != psutil.CONN_LISTEN
            assert not conn.laddr
        assert os.getpgid(worker.pid) == worker.pid  # its own process group


async def test_child_stays_light_no_trio_after_a_noop_init() -> None:
    async with procsup.open_worker(helpers.noop, max_jobs=None) as worker:
        loaded = await worker.run(helpers.modules_loaded)
    assert "trio" not in loaded
    assert "procsup._worker" not in loaded


async def test_worker_state_is_what_the_initializer_returned() -> None:
    async with procsup.open_worker(helpers.sleepy_init) as worker:
        state = await worker.run(helpers.state)
    assert state == {"model": "loaded", "pid": worker.pid}


async def test_an_initializer_larger_than_the_socket_buffer() -> None:
    # INIT is written ahead of the spawn; what the socket cannot hold yet
    # follows once the worker reads.
    data = os.urandom(8 * 1024 * 1024)
    async with procsup.open_worker(functools.partial(helpers.echo_init, data)) as worker:
        assert await worker.run(helpers.state) == data


async def test_initializer_as_module_function_string() -> None:
    async with procsup.open_worker("helpers:sleepy_init") as worker:
        assert (await worker.run(helpers.state))["model"] == "loaded"


async def test_async_initializer_and_async_job() -> None:
    async with procsup.open_worker(helpers.async_init, max_jobs=None) as worker:
        assert await worker.run(helpers.state) == "async-warm"
        assert await worker.run(helpers.async_double, 21) == 42


def test_worker_state_outside_a_worker_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="only available inside a worker"):
        procsup.worker_state()


# -- initialization settles on the first of ready / raised / exited / timeout --


async def test_initializer_that_raises() -> None:
    with pytest.raises(procsup.WorkerStartError) as info:
        async with procsup.open_worker(helpers.raising_init):
            pytest.fail("must not get a worker")
    err = info.value
    assert "RuntimeError: model file missing" in str(err)
    assert err.phase == "init"
    assert err.pid is not None
    assert err.remote_type == "RuntimeError"
    assert "raising_init" in (err.remote_traceback or "")
    assert not psutil.pid_exists(err.pid) or psutil.Process(err.pid).status() != "zombie"


async def test_initializer_that_exits() -> None:
    with pytest.raises(procsup.WorkerStartError) as info:
        async with procsup.open_worker(helpers.exiting_init):
            pytest.fail("must not get a worker")
    assert info.value.exit_code == 7
    assert "exit code 7" in str(info.value)


async def test_initializer_that_hangs_is_killed_at_init_timeout() -> None:
    start = time.monotonic()
    with pytest.raises(procsup.WorkerStartError) as info:
        async with procsup.open_worker(helpers.hanging_init, init_timeout=0.5):
            pytest.fail("must not get a worker")
    assert time.monotonic() - start < 5
    assert info.value.setting == "init_timeout=0.5s"
    assert "init_timeout=0.5s elapsed" in str(info.value)
    assert info.value.signal_name == "SIGKILL"


@pytest.mark.usefixtures("no_cloudpickle")  # with it, a lambda goes by value
async def test_bad_initializer_is_rejected_before_any_process_starts() -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        async with procsup.open_worker(lambda: None):
            pass
    with pytest.raises(ValueError, match="no module named"):
        async with procsup.open_worker("no_such_module_xyz:init"):
            pass
    with pytest.raises(ValueError, match="init_timeout must be > 0"):
        async with procsup.open_worker(init_timeout=0):
            pass


# -- jobs --


async def test_job_exception_keeps_its_type_and_remote_traceback() -> None:
    async with procsup.open_worker(max_jobs=None) as worker:
        with pytest.raises(ValueError, match="bad input") as info:
            await worker.run(helpers.raise_value_error)
        assert isinstance(info.value.__cause__, procsup.RemoteTraceback)
        assert "raise_value_error" in info.value.__cause__.text
        assert await worker.run(helpers.add, 1, 1) == 2  # still usable


async def test_unrebuildable_exception_becomes_remote_error() -> None:
    async with procsup.open_worker() as worker:
        with pytest.raises(procsup.RemoteError) as info:
            await worker.run(helpers.raise_unpicklable)
    assert info.value.type_name == "helpers.Unpicklable"
    assert info.value.message == "1/2"


async def test_unpicklable_arguments_raise_before_sending() -> None:
    async with procsup.open_worker() as worker:
        with pytest.raises(procsup.SerializationError, match="cannot be pickled"):
            await worker.run(helpers.add, lambda: 1, 2)
        assert worker.jobs_done == 0
        assert await worker.run(helpers.add, 1, 2) == 3  # the one job is still unused


async def test_unpicklable_result_names_the_type_and_worker_stays_usable() -> None:
    async with procsup.open_worker(max_jobs=None) as worker:
        with pytest.raises(procsup.SerializationError, match="function"):
            await worker.run(helpers.return_unpicklable)
        assert await worker.run(helpers.add, 2, 2) == 4


async def test_max_jobs_retires_the_worker() -> None:
    async with procsup.open_worker(max_jobs=2) as worker:
        await worker.run(helpers.noop)
        await worker.run(helpers.noop)
        with pytest.raises(procsup.WorkerClosedError):
            await worker.run(helpers.noop)
        await worker.wait_exited()
        assert worker.returncode == 0


async def test_default_is_one_job_per_process() -> None:
    async with procsup.open_worker() as worker:
        assert await worker.run(helpers.getpid) == worker.pid
        assert not worker.accepting_jobs


async def test_crash_during_a_job() -> None:
    async with procsup.open_worker() as worker:
        with pytest.raises(procsup.WorkerCrashedError) as info:
            await worker.run(helpers.kill_self)
    err = info.value
    assert (err.pid, err.phase, err.signal_name) == (worker.pid, "job", "SIGKILL")
    assert "killed by SIGKILL" in str(err)


# -- cancellation --


async def test_cancelling_a_job_stops_and_reaps_the_worker() -> None:
    async with procsup.open_worker() as worker:
        with trio.move_on_after(0.3):
            await worker.run(helpers.sleep_for, 60)
        # returned only after the child was reaped
        assert not worker.alive
        assert not psutil.pid_exists(worker.pid) or psutil.Process(worker.pid).ppid() != os.getpid()


async def test_cancelling_a_job_that_ignores_the_request_kills_it() -> None:
    async with procsup.open_worker(cancel_grace=0.2) as worker:
        with trio.move_on_after(0.3):
            await worker.run(helpers.busy_loop_ignoring_sigterm)
        assert not worker.alive
        assert worker.returncode == -signal.SIGKILL


# -- health and memory --


async def test_unresponsive_worker_is_killed() -> None:
    async with procsup.open_worker(
        helpers.noop, ping_interval=0.1, ping_timeout=0.5, max_jobs=None
    ) as worker:
        with pytest.raises(procsup.WorkerUnresponsiveError) as info:
            await worker.run(helpers.hold_the_gil, 30)
    assert info.value.setting == "ping_timeout=0.5s"
    assert info.value.phase == "job"


async def test_pings_are_answered_while_a_sync_job_runs() -> None:
    async with procsup.open_worker(ping_interval=0.05, ping_timeout=1.0) as worker:
        assert await worker.run(helpers.sleep_for, 0.5) == "slept"
        assert worker.last_ping_rtt is not None


async def test_without_a_pidfd_one_thread_watches_the_child(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # macOS and old Linux have no pidfd: a thread blocks in waitid instead,
    # one per child however many pings cut the wait short.
    import threading

    from procsup import _process

    monkeypatch.setattr(_process, "_open_pidfd", lambda pid: None)
    async with procsup.open_worker(
        max_jobs=None, ping_interval=0.02, start_method="exec"
    ) as worker:
        threads_before = threading.active_count()
        assert await worker.run(helpers.sleep_for, 0.3) == "slept"  # 15 ping cycles
        assert threading.active_count() <= threads_before + 1
        with pytest.raises(procsup.WorkerCrashedError) as info:
            await worker.run(helpers.exit_now, 5)
    assert info.value.returncode == 5


async def test_memory_limit_kills_with_the_measured_figure() -> None:
    async with procsup.open_worker(memory_limit_mb=150, memory_interval=0.05) as worker:
        with pytest.raises(procsup.MemoryLimitError) as info:
            await worker.run(helpers.allocate_mb, 300)
    err = info.value
    assert err.measured_mb > 150
    assert err.limit_mb == 150
    assert "memory_limit_mb=150" in str(err)
    assert err.signal_name == "SIGKILL"


async def test_memory_limit_applies_to_idle_workers_too() -> None:
    import functools

    import faults

    # Grows past the limit 0.1 s after warming (an initializer over the limit
    # is a start failure: see test_crash_matrix).
    grows_when_idle = functools.partial(faults.idle_fault, faults.Fault("memory", delay=0.1))
    async with procsup.open_worker(
        grows_when_idle, memory_limit_mb=150, memory_interval=0.05, max_jobs=None
    ) as worker:
        await worker.wait_exited()
        with pytest.raises(procsup.WorkerClosedError):
            await worker.run(helpers.noop)


async def test_memory_warning_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="procsup")
    async with procsup.open_worker(memory_warn_mb=50, memory_interval=0.05) as worker:
        await worker.run(helpers.allocate_mb, 100, 0.5)
    warnings = [r for r in caplog.records if "memory_warn_mb=50" in r.getMessage()]
    assert len(warnings) == 1  # rate-limited


# -- shutdown --


async def test_shutdown_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild"
    os.environ["PROCSUP_TEST_PIDFILE"] = str(pidfile)
    try:
        async with procsup.open_worker(shutdown_timeout=0.2) as worker:
            with trio.move_on_after(2):
                await worker.run(helpers.spawn_grandchild_then_hang)
    finally:
        del os.environ["PROCSUP_TEST_PIDFILE"]
    grandchild = int(pidfile.read_text())
    await until_gone(grandchild, 2)


async def test_close_twice_and_concurrently_is_harmless() -> None:
    async with procsup.open_worker(max_jobs=None) as worker:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.aclose)
            nursery.start_soon(worker.aclose)
        await worker.aclose()
        worker.kill()
        assert not worker.alive
        assert worker.returncode == 0


async def test_graceful_stop_lets_the_worker_exit_cleanly() -> None:
    async with procsup.open_worker(max_jobs=None) as worker:
        pass
    assert worker.returncode == 0


async def test_unbounded_worker_runs_many_jobs_in_one_process() -> None:
    async with procsup.open_worker(max_jobs=None) as worker:
        pids = {await worker.run(helpers.getpid) for _ in range(20)}
    assert pids == {worker.pid}


# -- logs --


async def test_a_log_flood_drops_records_and_says_how_many(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    total = 60_000
    async with procsup.open_worker() as worker:
        assert await worker.run(helpers.log_flood, total) == total
    flood = [r for r in caplog.records if r.name == "tests.flood"]
    notices = [r for r in caplog.records if "log records dropped" in r.getMessage()]
    assert notices, "the parent was not told that records were dropped"
    assert all(r.name == "procsup" and r.worker_pid == worker.pid for r in notices)
    dropped = sum(int(r.getMessage().split("] ")[1].split()[0]) for r in notices)
    assert len(flood) + dropped == total  # nothing lost silently


async def test_child_logs_arrive_tagged_with_the_pid(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with procsup.open_worker(max_jobs=None) as worker:
        await worker.run(helpers.log_lines, 3)
        with pytest.raises(procsup.WorkerCrashedError):
            await worker.run(helpers.log_then_exit)
    records = [r for r in caplog.records if r.name == "tests.worker"]
    messages = [r.getMessage() for r in records]
    assert f"[worker pid={worker.pid}] line 0 from the worker" in messages
    assert any("bad %s args %s" in m for m in messages)  # broken args degrade to the template
    assert any("last words" in m for m in messages)  # logged just before exit
    assert all(r.worker_pid == worker.pid for r in records)


# -- protocol --


async def test_garbage_on_the_channel_is_a_protocol_error() -> None:
    async with procsup.open_worker() as worker:
        with pytest.raises(procsup.ProtocolError) as info:
            await worker.run(helpers.write_garbage)
    assert info.value.phase == "job"
    assert not worker.alive


async def test_closed_channel_is_reported() -> None:
    async with procsup.open_worker() as worker:
        with pytest.raises((procsup.ProtocolError, procsup.WorkerCrashedError)):
            await worker.run(helpers.close_channel)
    assert not worker.alive


# -- the parent dies --

_PARENT = textwrap.dedent(
    """
    import sys, trio, procsup, helpers
    async def main():
        async with procsup.open_worker() as worker:
            print(worker.pid, flush=True)
            await worker.run(helpers.{job})
    trio.run(main)
    """
)


def _start_parent(job: str) -> tuple[subprocess.Popen[str], int]:
    parent = start_parent(_PARENT.format(job=job))
    assert parent.stdout is not None
    return parent, int(parent.stdout.readline())


def _gone_within(pid: int, seconds: float) -> bool:
    return not wait_gone([pid], seconds)


def test_worker_dies_with_a_sigkilled_parent() -> None:
    parent, worker_pid = _start_parent("busy_loop")
    time.sleep(0.2)
    parent.kill()
    parent.wait()
    assert parent.stdout is not None
    parent.stdout.close()
    assert _gone_within(worker_pid, 1.0)


def test_ctrl_c_in_the_parent_tears_everything_down() -> None:
    parent, worker_pid = _start_parent("hang")
    time.sleep(0.2)
    parent.send_signal(signal.SIGINT)
    assert parent.wait(timeout=10) != 0
    assert parent.stdout is not None
    parent.stdout.close()
    assert _gone_within(worker_pid, 1.0)


async def test_workers_ignore_sigint() -> None:
    async with procsup.open_worker(max_jobs=None) as worker:
        os.kill(worker.pid, signal.SIGINT)
        assert await worker.run(helpers.add, 1, 1) == 2
