"""A pool of fake workers: the pool's real logic (acquisition, warming,
backoff, the load target) over workers that are objects in this process,
so that tests run it under trio's ``autojump_clock`` in virtual time.

The seam is :class:`procsup._pool.Pool`'s ``start_worker``: the real one is
``supervise`` with the pool's options and spawner; :class:`FakeStarts` is
a stand-in that warms a :class:`FakeWorker` after a scripted delay, or
fails the start as a real one would. Never use it with a real child, and
never use autojump_clock with a real child.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from procsup import WorkerCrashedError, WorkerStartError
from procsup._job import _Job
from procsup._options import PoolOptions
from procsup._pool import Pool
from procsup._worker import WorkerEvents

# What a start does: "ok", "fail" (the initializer raised), "hang" (it never
# answers and is killed at init_timeout); optionally with its warm-up time.
Plan = Callable[[int], "str | tuple[str, float]"]


class FakeWorker:
    """What the pool uses of a :class:`procsup.Worker`; a job runs in the
    calling task (an async job is awaited: ``trio.sleep`` is a long job)."""

    def __init__(self, pid: int, max_jobs: int | None, events: WorkerEvents) -> None:
        self.pid = pid
        self._events = events
        self.max_jobs = max_jobs
        self.jobs_done = 0
        self.returncode: int | None = None
        self.dies_before_send = False  # the next job finds it dead: it was never sent
        self._job_runs_on = False  # as Worker's: no job runs without its caller here
        self._busy = False
        self._exited = trio.Event()

    @property
    def alive(self) -> bool:
        return not self._exited.is_set()

    @property
    def accepting_jobs(self) -> bool:
        jobs_left = self.max_jobs is None or self.jobs_done < self.max_jobs
        return self.alive and not self._busy and jobs_left

    @property
    def exiting(self) -> bool:
        """As ``Worker.exiting``: its last job is done, it exits on its own."""
        return (
            self.alive
            and not self._busy
            and self.max_jobs is not None
            and self.jobs_done >= self.max_jobs
        )

    async def wait_exited(self) -> None:
        await self._exited.wait()

    def _join_pool(self, idle_pings: object) -> None:
        """As ``Worker._join_pool``; a fake is not pinged."""

    def exit(self, returncode: int = 0) -> None:
        if self.alive:
            self.returncode = returncode
            self._exited.set()

    def kill(self) -> None:
        self.exit(-9)

    async def run(
        self,
        fn: Callable[..., Any],
        *args: Any,
        timeout: float | None = None,
        kill_on_cancel: bool = True,
    ) -> Any:
        job = await self._run(fn, args, timeout, kill_on_cancel)
        if job is None:
            raise WorkerCrashedError("worker died while idle", pid=self.pid, phase="idle")
        return job.unwrap()

    async def _run(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        timeout: float | None = None,
        kill_on_cancel: bool = True,
    ) -> _Job | None:
        """As ``Worker._run`` (``timeout`` and ``kill_on_cancel`` are not
        modelled): the job settled, or None when never sent."""
        self._events("job_started", self.pid, None)
        try:
            job = await self._send_and_wait(fn, args)
        except BaseException as exc:
            self._events("job_finished", self.pid, exc)
            raise
        self._events("job_finished", self.pid, None if job is None else job.error)
        if job is not None:
            self._events("job_completed", self.pid, None)  # a fake job always answers
        return job

    async def _send_and_wait(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> _Job | None:
        if self.dies_before_send:
            self.kill()
            await trio.lowlevel.checkpoint()
            return None
        assert self.accepting_jobs, "the pool lent a worker that takes no jobs"
        self._busy = True
        job = _Job(self.jobs_done)
        try:
            value = fn(*args)
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:  # noqa: BLE001 -- the job's error is its outcome
            job.fail(exc)
        except BaseException:
            self.kill()  # a cancelled job costs its worker, as a real one's does
            raise
        else:
            job.succeed(value)
        finally:
            self._busy = False
            self.jobs_done += 1
        if self.max_jobs is not None and self.jobs_done >= self.max_jobs:
            self.exit(0)  # retires after its last job
        return job


class FakeStarts:
    """The pool's ``start_worker``: each start warms a :class:`FakeWorker`
    after ``warm`` seconds, or does what ``plan(n)`` says for the n-th start
    (from 1). ``failing = True`` makes every start fail from then on."""

    def __init__(
        self,
        *,
        warm: float = 0.5,
        init_timeout: float = 10.0,
        max_jobs: int | None = 1,
        plan: Plan | None = None,
    ) -> None:
        self.warm = warm
        self.init_timeout = init_timeout
        self.max_jobs = max_jobs
        self.plan: Plan = plan or (lambda n: "ok")
        self.failing = False
        self.started = 0
        self.workers: list[FakeWorker] = []
        self.hung: list[int] = []  # pids of starts killed at init_timeout
        self.live = 0  # fake processes that exist now
        self.live_pids: set[int] = set()  # their pids
        self.most_live = 0
        self._pids = itertools.count(10_001)

    @asynccontextmanager
    async def __call__(self, events: WorkerEvents, slot: int) -> AsyncIterator[FakeWorker]:
        self.started += 1
        planned = "fail" if self.failing else self.plan(self.started)
        outcome, warm = planned if isinstance(planned, tuple) else (planned, self.warm)
        pid = next(self._pids)
        self.live += 1
        self.live_pids.add(pid)
        self.most_live = max(self.most_live, self.live)
        try:
            events("start", pid, None)
            if outcome == "hang" or warm >= self.init_timeout:
                await trio.sleep(self.init_timeout)
                self.hung.append(pid)
                raise WorkerStartError(
                    "initializer did not finish in time",
                    pid=pid,
                    phase="init",
                    returncode=-9,
                    setting=f"init_timeout={self.init_timeout:g}s",
                )
            await trio.sleep(warm)
            if outcome == "fail":
                raise WorkerStartError(
                    "initializer raised RuntimeError: model file missing",
                    pid=pid,
                    phase="init",
                    returncode=1,
                )
            worker = FakeWorker(pid, self.max_jobs, events)
            self.workers.append(worker)
            try:
                yield worker
            finally:
                worker.kill()  # stopped and reaped on the way out (a no-op once it exited)
        finally:
            self.live -= 1
            self.live_pids.discard(pid)


@asynccontextmanager
async def open_fake_pool(starts: FakeStarts, **options: Any) -> AsyncIterator[Pool]:
    """A real pool (``options``: :class:`PoolOptions`) over fake workers;
    unbounded unless ``max_workers`` is given (the default cap is the
    machine's CPUs: these tests must not depend on the machine)."""
    options.setdefault("max_workers", None)
    async with Pool._open(PoolOptions(**options), starts) as pool:  # type: ignore[arg-type]
        yield pool
