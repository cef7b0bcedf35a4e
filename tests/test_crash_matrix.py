"""The crash matrix: every fault, in every phase of a worker's life.

Each cell runs a real pool whose worker suffers one fault (see tests/faults.py)
at one moment, and checks what a user would: the typed error names the worker's
pid, its phase and how it ended; the pool keeps serving; nothing is left behind
(the autouse guard in conftest.py checks processes and descriptors, and the
grandchild cells check the grandchild).

Phases: ``init`` (the initializer), ``idle`` (a thread, after warming),
``job_start`` (unpickling the job's argument), ``job`` (the job's code),
``result`` (pickling the job's result) and ``shutdown`` (an ``atexit`` hook).
"""

from __future__ import annotations

import functools
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faults
import helpers
import psutil
import pytest
import trio
from support import children, templates, until_gone

import procsup

PHASES = ("init", "idle", "job_start", "job", "result", "shutdown")
KILLED = -signal.SIGKILL
SEGV = -signal.SIGSEGV
EXIT = faults.EXIT_CODE

OPTIONS: dict[str, Any] = {
    "idle": 1,
    "max_workers": 3,
    "max_jobs": 1,
    "init_timeout": 5.0,
    "ping_interval": 0.1,
    "ping_timeout": 0.5,
    "shutdown_timeout": 0.5,
    "cancel_grace": 0.5,
    "backoff_base": 0.01,
}
MEMORY_OPTIONS: dict[str, Any] = {
    "memory_limit_mb": faults.MEMORY_LIMIT_MB,
    "memory_interval": 0.05,
    # Only the memory sampler may fire here: a worker starved of CPU on a
    # loaded machine would otherwise miss a 0.5 s ping first.
    "ping_timeout": 10.0,
}
INIT_TIMEOUT = 1.0  # for the cells that can only end by init_timeout


@dataclass(frozen=True)
class Expect:
    """What a cell yields.

    error: raised to the caller (``None``: nothing is raised; an idle fault is
        a silent replacement, a shutdown fault is only seen in the exit).
    returncodes: how the process may end (``()``: it lives on).
    setting: the option that fired, if one did.
    says: a phrase of ``str(error)``.
    """

    error: type[BaseException] | None
    returncodes: tuple[int, ...]
    setting: str | None = None
    says: str = ""


# How each fault kills the process, once the worker is running.
_ENDS = {
    "exit": Expect(procsup.WorkerCrashedError, (EXIT,), says="worker died during a job"),
    "sigkill": Expect(procsup.WorkerCrashedError, (KILLED,), says="worker died during a job"),
    "segv": Expect(procsup.WorkerCrashedError, (SEGV,), says="worker died during a job"),
    "hang": Expect(
        procsup.WorkerUnresponsiveError,
        (KILLED,),
        setting="ping_timeout=0.5s",
        says="did not answer a ping",
    ),
    "memory": Expect(
        procsup.MemoryLimitError,
        (KILLED,),
        setting=f"memory_limit_mb={faults.MEMORY_LIMIT_MB}",
        says="over the limit",
    ),
    "garbage": Expect(procsup.ProtocolError, (KILLED,), says="broke the protocol"),
    # The parent sees EOF and would kill the worker after a second; before
    # that, the worker's next write (a PONG, every 0.1 s here) fails and it,
    # taking its parent for gone, SIGKILLs its own process group.
    "close_channel": Expect(procsup.WorkerCrashedError, (KILLED,), says="worker died"),
    "grandchild": Expect(procsup.WorkerCrashedError, (EXIT,), says="worker died during a job"),
}

_INIT = {
    "raise": Expect(
        procsup.WorkerStartError, (1, KILLED), says="initializer raised faults.InjectedFault"
    ),
    "exit": Expect(procsup.WorkerStartError, (EXIT,), says="exited during initialization"),
    "sigkill": Expect(procsup.WorkerStartError, (KILLED,), says="exited during initialization"),
    "segv": Expect(procsup.WorkerStartError, (SEGV,), says="exited during initialization"),
    "hang": Expect(
        procsup.WorkerStartError,
        (KILLED,),
        setting=f"init_timeout={INIT_TIMEOUT:g}s",
        says="did not finish in time",
    ),
    "memory": Expect(
        procsup.WorkerStartError,
        (KILLED,),
        setting=f"memory_limit_mb={faults.MEMORY_LIMIT_MB}",
        says="over the limit",
    ),
    "garbage": Expect(procsup.WorkerStartError, (KILLED,), says="broke the protocol"),
    # The parent sees EOF at once, gives the worker a second to exit, then
    # kills it: a worker that closes its channel and lives on is broken.
    "close_channel": Expect(
        procsup.WorkerStartError, (KILLED,), says="closed its channel but kept running"
    ),
    "grandchild": Expect(procsup.WorkerStartError, (EXIT,), says="exited during initialization"),
}


def expected(kind: str, phase: str) -> Expect:
    if phase == "init":
        return _INIT[kind]
    if kind == "raise":
        return {
            "idle": Expect(None, ()),  # the thread dies, the worker serves on
            "job_start": Expect(faults.InjectedFault, (), says="injected fault"),
            "job": Expect(faults.InjectedFault, (), says="injected fault"),
            "result": Expect(procsup.SerializationError, (), says="could not be pickled"),
            "shutdown": Expect(None, (0,)),  # atexit prints and ignores it
        }[phase]
    ends = _ENDS[kind]
    if phase in ("idle", "shutdown"):
        return Expect(None, ends.returncodes)
    return ends


def cell_options(kind: str, phase: str) -> dict[str, Any]:
    options = dict(OPTIONS)
    if kind == "memory":
        options.update(MEMORY_OPTIONS)
    if phase == "init" and kind == "hang":
        options["init_timeout"] = INIT_TIMEOUT
    return options


# -- checks ----------------------------------------------------------------------


async def next_event(
    events: trio.MemoryReceiveChannel[procsup.PoolEvent], kind: str, pid: int | None = None
) -> procsup.PoolEvent:
    with trio.fail_after(10):
        async for event in events:
            if event.kind == kind and (pid is None or event.pid == pid):
                return event
    raise AssertionError(f"the event stream ended before a {kind!r} event")


def check_worker_error(err: BaseException, expect: Expect, phase: str) -> None:
    """The error says which worker, in which phase, and how it ended."""
    assert isinstance(err, procsup.WorkerError), repr(err)
    text = str(err)
    assert err.pid is not None
    assert f"pid={err.pid}" in text
    assert err.phase == phase
    assert f"phase={phase}" in text
    assert err.returncode in expect.returncodes, text
    if err.returncode is not None and err.returncode < 0:
        name = signal.Signals(-err.returncode).name
        assert err.signal_name == name
        assert err.exit_code is None
        assert f"killed by {name}" in text
    else:
        assert err.exit_code == err.returncode
        assert err.signal_name is None
        assert f"exit code {err.returncode}" in text
    if expect.setting is not None:
        assert err.setting == expect.setting
        assert expect.setting in text
    assert expect.says in text


async def assert_grandchild_gone(workdir: Path) -> None:
    """The grandchild was not our child, so the conftest guard cannot see it."""
    pidfile = workdir / faults.GRANDCHILD_PIDFILE
    if not pidfile.exists():
        return
    pid = int(pidfile.read_text())
    # SIGKILL is sent before the error returns; death is async (its new parent reaps it)
    await until_gone(pid, 2)


# -- the phases --------------------------------------------------------------------

Events = trio.MemoryReceiveChannel[procsup.PoolEvent]


async def in_init(pool: procsup.Pool, events: Events, fault: faults.Fault, expect: Expect) -> None:
    failed = await next_event(events, "start_failed")
    err = failed.error
    assert err is not None
    check_worker_error(err, expect, "init")
    assert failed.pid == err.pid
    assert pool.statistics().last_start_error is err
    if fault.kind == "raise":
        assert isinstance(err, procsup.WorkerStartError)
        assert err.remote_type == "faults.InjectedFault"
        assert "InjectedFault" in (err.remote_traceback or "")


async def in_idle(pool: procsup.Pool, events: Events, fault: faults.Fault, expect: Expect) -> None:
    pid = (await next_event(events, "ready")).pid
    if not expect.returncodes:  # the fault does not end the worker: it still serves
        done = Path(fault.workdir) / "idle-fault-done"
        with trio.fail_after(10):
            while not done.exists():
                await trio.sleep(0.01)
        assert await pool.run(helpers.getpid) == pid
        return
    exited = await next_event(events, "exited", pid)
    assert exited.returncode in expect.returncodes


async def in_job(pool: procsup.Pool, fn: Any, arg: object, expect: Expect) -> None:
    assert expect.error is not None
    with pytest.raises(expect.error) as info:
        await pool.run(fn, arg)
    err = info.value
    if isinstance(err, procsup.WorkerError):
        check_worker_error(err, expect, "job")
        # Reaped before the error was raised (by us, or by the fork server).
        assert err.pid not in children()
    else:  # the job's own exception, or its result's
        assert expect.says in str(err)


async def in_job_start(
    pool: procsup.Pool, events: Events, fault: faults.Fault, expect: Expect
) -> None:
    await in_job(pool, faults.take, faults.FireOnUnpickle(fault), expect)


async def in_job_body(
    pool: procsup.Pool, events: Events, fault: faults.Fault, expect: Expect
) -> None:
    await in_job(pool, faults.job_fault, fault, expect)


async def in_result(
    pool: procsup.Pool, events: Events, fault: faults.Fault, expect: Expect
) -> None:
    await in_job(pool, faults.result_fault, fault, expect)


async def in_shutdown(
    pool: procsup.Pool, events: Events, fault: faults.Fault, expect: Expect
) -> None:
    # The worker retires after this job (max_jobs=1); its atexit hook faults.
    pid = await pool.run(helpers.getpid)
    exited = await next_event(events, "exited", pid)
    assert exited.returncode in expect.returncodes


RUNNERS = {
    "init": in_init,
    "idle": in_idle,
    "job_start": in_job_start,
    "job": in_job_body,
    "result": in_result,
    "shutdown": in_shutdown,
}
INITIALIZERS = {
    "init": faults.init_fault,
    "idle": faults.idle_fault,
    "shutdown": faults.shutdown_fault,
}


# The fork server differs in how a worker starts and who reaps it (the
# template, which kills the worker's group): the phases where that shows.
CELLS = [
    pytest.param(kind, phase, method, id=f"{kind}-{phase}" + ("-fs" if method != "exec" else ""))
    for method, phases in (("exec", PHASES), ("forkserver", ("init", "idle", "job", "shutdown")))
    for phase in phases
    for kind in faults.KINDS
]


@pytest.mark.parametrize(("kind", "phase", "start_method"), CELLS)
async def test_fault(kind: str, phase: str, start_method: str, tmp_path: Path) -> None:
    expect = expected(kind, phase)
    hook = INITIALIZERS.get(phase)
    # An initializer's fault is carried by every worker: only the first fires.
    fault = faults.Fault(
        kind, str(tmp_path), once=hook is not None, delay=0.1 if phase == "idle" else 0.02
    )
    initializer = functools.partial(hook, fault) if hook else None

    async with (
        procsup.open_pool(
            initializer, start_method=start_method, **cell_options(kind, phase)
        ) as pool,
        pool.events() as events,
    ):
        await RUNNERS[phase](pool, events, fault, expect)
        # The pool keeps serving.
        assert await pool.run(faults.take, "after") == "after"
        stats = pool.statistics()
        assert (stats.busy, stats.waiting) == (0, 0)
    await assert_grandchild_gone(tmp_path)


# -- hangs that pings cannot see, and faults from outside ------------------------------


async def test_a_job_hanging_in_python_is_the_callers_to_cancel() -> None:
    """A job sleeping forever still answers pings (a reader thread does): it is
    a long job, not a broken worker. Cancelling the call stops it within
    ``cancel_grace`` and reaps it; the pool keeps serving."""
    async with procsup.open_pool(idle=1, cancel_grace=0.3, ping_interval=0.1) as pool:
        await pool.wait_warm()
        start = time.monotonic()
        with trio.move_on_after(0.5) as scope:
            await pool.run(helpers.hang)
        assert scope.cancelled_caught
        assert time.monotonic() - start < 0.5 + 0.3 + 2
        assert await pool.run(faults.take, 1) == 1


async def test_a_job_holding_the_gil_is_killed_as_unresponsive() -> None:
    async with procsup.open_pool(idle=1, ping_interval=0.1, ping_timeout=0.5) as pool:
        with pytest.raises(procsup.WorkerUnresponsiveError) as info:
            await pool.run(helpers.hold_the_gil, 30.0)
        check_worker_error(info.value, Expect(None, (KILLED,), setting="ping_timeout=0.5s"), "job")
        assert await pool.run(faults.take, 1) == 1


@pytest.mark.parametrize("state", ["idle", "busy"])
async def test_external_sigkill(state: str) -> None:
    async with procsup.open_pool(idle=1, max_jobs=None) as pool, pool.events() as events:
        pid = (await next_event(events, "ready")).pid
        assert pid is not None
        if state == "idle":
            os.kill(pid, signal.SIGKILL)
            exited = await next_event(events, "exited", pid)
            assert exited.returncode == KILLED
        else:
            async with pool.acquire() as worker:
                assert worker.pid == pid
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(trio.to_thread.run_sync, _kill_soon, pid)
                    with pytest.raises(procsup.WorkerCrashedError) as info:
                        await worker.run(helpers.sleep_for, 30.0)
            check_worker_error(info.value, Expect(None, (KILLED,)), "job")
        assert await pool.run(faults.take, 1) == 1


def _kill_soon(pid: int) -> None:
    time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)


async def test_the_fork_server_is_sigkilled() -> None:
    """Its workers go with it (busy jobs end with WorkerCrashedError); the next
    start brings up a new template and the pool serves on."""
    async with (
        procsup.open_pool(idle=2, max_jobs=None, start_method="forkserver") as pool,
        pool.events() as events,
    ):
        await pool.wait_warm()
        (template,) = templates()
        async with pool.acquire() as worker, trio.open_nursery() as nursery:
            await pool.wait_warm()  # the replacement for the one we hold, forked too
            workers = {p.pid for p in template.children()}
            nursery.start_soon(trio.to_thread.run_sync, _kill_soon, template.pid)
            with pytest.raises(procsup.WorkerCrashedError) as info:
                await worker.run(helpers.sleep_for, 30.0)
        check_worker_error(info.value, Expect(None, (KILLED,)), "job")
        # The idle one goes too (a job sent to it meanwhile would crash as well).
        while workers:
            workers.discard((await next_event(events, "exited")).pid or 0)
        assert await pool.run(faults.take, 1) == 1
        assert template.pid not in {p.pid for p in psutil.Process().children()}
