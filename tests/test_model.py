"""Model-based test of the pool: random sequences of operations, each run in
one ``trio.run`` against a real pool, with a small model of what the pool's
counts must be once it has settled.

Operations: acquire (and hold), release, start failures on/off (a file flag
the initializer checks), SIGKILL of an idle worker, a load change (the pool's
``load`` callable reads a variable), and close (with workers still held).

The model (max_jobs=None, so a released worker returns to idle):

* busy == the workers held; waiting == 0 once settled;
* idle only rises by refilling: after each operation ``idle == max(idle,
  min(target, max_workers - busy))`` while starts succeed, where ``target`` is
  the idle target at the polled load; while starts fail, idle only falls;
* health is "degraded" from a failed start until a start succeeds (a warm
  worker killed before its first job is a failed start);
* the pool's own numbers agree with its events and with the processes alive.

The pool is compared at quiescent points: no start in flight, no worker
closing, and the model's figures reached; the wait is driven by the pool's
events, with a deadline that turns a disagreement into a failure.
"""

from __future__ import annotations

import functools
import os
import signal
import tempfile
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faults
import helpers
import psutil
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import children, is_template

import procsup

IDLE, MAX_WORKERS, THRESHOLD = 2, 4, 0.7
LOADS = (0.0, 0.3, 0.5, 1.0)

operations = st.lists(
    st.one_of(
        st.just(("acquire",)),
        st.tuples(st.just("release"), st.integers(0, MAX_WORKERS - 1)),
        st.just(("fail_on",)),
        st.just(("fail_off",)),
        st.tuples(st.just("kill_idle"), st.integers(0, MAX_WORKERS - 1)),
        st.tuples(st.just("load"), st.sampled_from(LOADS)),
    ),
    min_size=3,
    max_size=12,
)


@dataclass
class Model:
    idle: int = 0
    held: list[tuple[AbstractAsyncContextManager[Any], Any]] = field(default_factory=list)
    failing: bool = False
    degraded: bool = False
    load: float = 0.0
    used: set[int] = field(default_factory=set)  # workers that ran a job

    @property
    def busy(self) -> int:
        return len(self.held)

    @property
    def target(self) -> int:
        return procsup.idle_target(IDLE, self.load, THRESHOLD)

    def refill(self) -> None:
        """What the pool does after any change: start towards its target."""
        wanted = min(self.target, MAX_WORKERS - self.busy)
        if self.idle >= wanted:
            return
        if self.failing:
            self.degraded = True
        else:
            self.idle = wanted
            self.degraded = False


@dataclass
class Observed:
    """The pool's events, kept by an ``on_event`` callback."""

    before: set[int]  # processes that were not ours to count
    counts: dict[str, int] = field(default_factory=dict)
    live: set[int] = field(default_factory=set)
    changed: trio.Event = field(default_factory=trio.Event)

    def on_event(self, event: procsup.PoolEvent) -> None:
        self.counts[event.kind] = self.counts.get(event.kind, 0) + 1
        if event.kind == "ready" and event.pid is not None:
            self.live.add(event.pid)
        elif event.kind == "exited":
            self.live.discard(event.pid or 0)
        self.changed.set()
        self.changed = trio.Event()


async def settle(pool: procsup.Pool, model: Model, seen: Observed) -> None:
    """Wait for a quiescent point where the pool agrees with the model; fail
    with both sides if none comes."""
    mismatch = ""
    with trio.move_on_after(5):
        while True:
            stats = pool.statistics()
            mismatch = _disagreement(stats, model, seen)
            if not mismatch:
                return
            # Events wake us; a load poll has none, so look again soon anyway.
            with trio.move_on_after(0.05):
                await seen.changed.wait()
    pytest.fail(f"the pool never agreed with the model: {mismatch}")


def _disagreement(stats: procsup.PoolStatistics, model: Model, seen: Observed) -> str:
    expected = {
        "warming": 0,
        "closing": 0,
        "waiting": 0,
        "busy": model.busy,
        "idle": model.idle,
        "load": model.load,
        "target_idle": model.target,
        "health": "degraded" if model.degraded else "ok",
        "starts": seen.counts.get("start", 0),
        "start_failures": seen.counts.get("start_failed", 0),
    }
    actual = {name: getattr(stats, name) for name in expected}
    if actual != expected:
        return f"expected {expected}, got {actual}"
    if len(seen.live) != stats.idle + stats.busy:
        return f"{len(seen.live)} workers warm by the events, statistics say {stats}"
    # Processes: the workers the events announced, and maybe a fork server.
    processes = children() - seen.before
    if not seen.live <= processes:
        return f"workers {seen.live - processes} announced but not running"
    if any(not _is_fork_server(pid) for pid in processes - seen.live):
        return f"processes {processes} but workers {seen.live} ({stats})"
    return ""


def _set_flag(flag: Path, on: bool) -> None:
    if on:
        flag.touch()
    else:
        flag.unlink(missing_ok=True)


def _is_fork_server(pid: int) -> bool:
    try:
        return is_template(pid)
    except psutil.NoSuchProcess:
        return True  # gone meanwhile: not a worker left behind


async def run_operations(ops: list[tuple[Any, ...]], workdir: Path) -> None:
    flag = workdir / "fail"
    model = Model()
    seen = Observed(before=children())
    pool_cm = procsup.open_pool(
        functools.partial(faults.flag_init, str(flag)),
        idle=IDLE,
        max_workers=MAX_WORKERS,
        max_jobs=None,
        load=lambda: model.load,
        load_threshold=THRESHOLD,
        load_interval=0.02,
        max_acquire_attempts=2,
        backoff_base=0.02,
        backoff_cap=0.1,
        shutdown_timeout=1.0,
        on_event=seen.on_event,
    )
    pool = await pool_cm.__aenter__()
    try:
        model.refill()
        await settle(pool, model, seen)
        for op in ops:
            await apply(op, pool, model, seen, flag)
            await settle(pool, model, seen)
    finally:
        # Close with workers still held: they are stopped, and reaped before
        # open_pool's block returns.
        await pool_cm.__aexit__(None, None, None)
        for lease_cm, _ in model.held:
            await lease_cm.__aexit__(None, None, None)
    assert not children() - seen.before
    with pytest.raises(procsup.PoolClosedError):
        async with pool.acquire():
            pass


async def apply(
    op: tuple[Any, ...], pool: procsup.Pool, model: Model, seen: Observed, flag: Path
) -> None:
    name = op[0]
    if name == "acquire":
        if model.busy == MAX_WORKERS:
            return  # it would wait for a release that never comes
        if model.failing and model.idle == 0:
            with pytest.raises(procsup.NoWorkerAvailableError):
                async with pool.acquire():
                    pass
            model.degraded = True
            return
        lease_cm = pool.acquire()
        lease = await lease_cm.__aenter__()
        assert await lease.run(helpers.getpid) == lease.pid
        model.used.add(lease.pid)
        model.held.append((lease_cm, lease))
        if model.idle:
            model.idle -= 1
        else:
            model.degraded = False  # a start for us succeeded
        model.refill()
    elif name == "release":
        if not model.held:
            return
        lease_cm, _ = model.held.pop(op[1] % len(model.held))
        await lease_cm.__aexit__(None, None, None)
        model.idle += 1
        model.refill()
    elif name in ("fail_on", "fail_off"):
        model.failing = name == "fail_on"
        _set_flag(flag, model.failing)
        model.refill()
    elif name == "kill_idle":
        held = {lease.pid for _, lease in model.held}
        idle = sorted(seen.live - held)
        if not idle:
            return
        pid = idle[op[1] % len(idle)]
        async with pool.events() as events:
            os.kill(pid, signal.SIGKILL)
            with trio.fail_after(10):
                async for event in events:
                    if event.kind == "exited" and event.pid == pid:
                        assert event.returncode == -signal.SIGKILL
                        break
        model.idle -= 1
        if pid not in model.used:
            model.degraded = True  # a warm worker that died before its first job: a failed start
        model.refill()
    elif name == "load":
        model.load = op[1]
        model.refill()


@settings(
    max_examples=15,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(ops=operations)
def test_pool_agrees_with_its_model(ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        trio.run(run_operations, ops, Path(workdir))
