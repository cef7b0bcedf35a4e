"""A batch's races, made certain: a TRIM that takes back the job about to
begin, and a timeout whose kill lands on the next job of the batch.

Each happens in a real worker within microseconds, so these tests drive one
worker's batch (``Worker._run_batch``, as ``pool.map`` does) and hold the
worker at the exact point with fifos (``map_jobs.Gated``): the job or the
order waits for a byte the test writes, and says on another fifo where it is.
What they check is what a user sees: each job's result or error, and the
worker's events (every ``job_started`` followed by one ``job_finished``).
"""

from __future__ import annotations

import os
import select
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import trio
from map_jobs import Gated, square

import procsup
from procsup._batch import UNSTARTED, Batch, batch_payload, pickle_argument
from procsup._options import WorkerOptions
from procsup._spawn import open_spawner
from procsup._wire import Kind, encode
from procsup._worker import Worker, supervise

Event = tuple[str, BaseException | None]


class _Fifos:
    """``began`` (the worker writes lines; read here) and ``go`` (a byte
    written here releases one wait in the worker). Both are held open
    read-write here, so neither side's open blocks and no read sees EOF."""

    def __init__(self, directory: Path) -> None:
        self.began_path, self.go_path = str(directory / "began"), str(directory / "go")
        os.mkfifo(self.began_path)
        os.mkfifo(self.go_path)
        self._began = os.open(self.began_path, os.O_RDWR | os.O_NONBLOCK)
        self._go = os.open(self.go_path, os.O_RDWR)
        self._lines: list[str] = []
        self._partial = b""

    def release(self) -> None:
        os.write(self._go, b"x")

    async def said(self, line: str) -> None:
        """Until the worker has written ``line``."""
        with trio.fail_after(10):
            while not self._take(line):
                await trio.lowlevel.wait_readable(self._began)
                self._read()

    def said_now(self, line: str) -> None:
        """The same, blocking this thread: nothing else of the parent runs meanwhile."""
        while not self._take(line):
            readable, _, _ = select.select([self._began], [], [], 10)
            assert readable, f"the worker did not say {line!r} within 10 s"
            self._read()

    def _take(self, line: str) -> bool:
        if line in self._lines:
            self._lines.remove(line)
            return True
        return False

    def _read(self) -> None:
        try:
            data = self._partial + os.read(self._began, 4096)
        except BlockingIOError:
            return
        *lines, self._partial = data.split(b"\n")
        self._lines.extend(line.decode() for line in lines)

    def close(self) -> None:
        os.close(self._began)
        os.close(self._go)


class _Events(list[Event]):
    """A worker's job events, ``(kind, error)``, as they come."""

    def __init__(self) -> None:
        super().__init__()
        self._started = 0
        self._waiting: tuple[int, trio.Event] | None = None

    def __call__(self, kind: str, pid: int, error: BaseException | None) -> None:
        if not kind.startswith("job_"):
            return
        self.append((kind, error))
        if kind == "job_started":
            self._started += 1
            if self._waiting is not None and self._started >= self._waiting[0]:
                self._waiting[1].set()

    async def started(self, count: int) -> None:
        """Until ``count`` jobs have had their job_started."""
        if self._started < count:
            self._waiting = (count, trio.Event())
            with trio.fail_after(10):
                await self._waiting[1].wait()


@asynccontextmanager
async def watched_worker(events: _Events) -> AsyncIterator[Worker]:
    """A worker that takes any number of jobs, its events in ``events``."""
    options = WorkerOptions(max_jobs=None).chosen(pool=False)
    async with open_spawner(options) as spawner, supervise(options, spawner, events) as worker:
        yield worker


class _Ends:
    """A batch's ``on_job``: each position's (value, error)."""

    def __init__(self) -> None:
        self.by_position: dict[int, tuple[Any, BaseException | None]] = {}

    def __call__(self, position: int, value: Any, error: BaseException | None) -> None:
        assert position not in self.by_position, f"job {position} ended twice"
        self.by_position[position] = (value, error)


def payload(fn: Gated, inputs: list[tuple[int, str]]) -> bytes:
    arguments = [pickle_argument(item) for item in inputs]
    assert None not in arguments
    return batch_payload(fn, arguments)  # type: ignore[arg-type]


def assert_paired(events: list[Event]) -> None:
    """Every job_started is followed by exactly one job_finished."""
    open_jobs = 0
    for kind, _ in events:
        if kind == "job_started":
            assert open_jobs == 0, events
            open_jobs = 1
        elif kind == "job_finished":
            assert open_jobs == 1, events
            open_jobs = 0
    assert open_jobs == 0, events


async def test_a_job_trimmed_as_it_would_begin_has_its_job_finished(tmp_path: Path) -> None:
    """Job 0 answers; the worker stops between it and job 1 (unpickling the
    batch's second order); a TRIM sent while job 0 ran, as the parent saw
    it, reaches the worker now: it gives back jobs 1 and 2, the very job
    the parent announced (``job_started``) on job 0's answer. That job gets
    its ``job_finished``, with an error that says it was given back."""
    events = _Events()
    ends = _Ends()
    with closing(_Fifos(tmp_path)) as fifo:
        fn = Gated(fifo.began_path, fifo.go_path)
        async with watched_worker(events) as worker, trio.open_nursery() as nursery:
            batch = Batch(payload(fn, [(0, "hold")]), 1, ends, trim_after=3600.0)
            done = trio.Event()

            async def run() -> None:
                assert await worker._run_batch(batch, None)
                done.set()

            nursery.start_soon(run)
            await fifo.said("0")  # job 0 runs: the batch is the worker's job
            running = batch.id
            assert worker._extend_batch(batch, 2, payload(fn, [(1, ""), (2, "")]))
            fifo.release()  # job 0 answers; the worker waits in order 2's unpickling
            await fifo.said("order 2")
            await events.started(2)  # the parent read job 0's answer: job 1 is announced
            # The parent's TRIM as it went out while job 0 ran (it crossed
            # job 0's answer): the worker has begun nothing after job 0.
            batch.trim_sent = True
            worker._channel.send_control(encode(Kind.TRIM, running, batch.last_id))
            with trio.fail_after(10):
                await done.wait()
            batch_events = list(events)
            fifo.release()  # order 2 unpickles: its jobs were given back, none begins
            assert await worker.run(square, 3) == 9  # the worker serves on
            assert worker.jobs_done == 2
    assert ends.by_position == {0: (0, None), 1: (UNSTARTED, None), 2: (UNSTARTED, None)}
    assert_paired(batch_events)
    assert [kind for kind, _ in batch_events] == [
        "job_started",
        "job_finished",
        "job_completed",
        "job_started",
        "job_finished",
    ]
    given_back = batch_events[-1][1]
    assert isinstance(given_back, procsup.WorkerClosedError)
    assert given_back.phase == "idle"
    assert "given back" in str(given_back)


async def test_the_job_after_a_timed_out_one_gets_a_truthful_error(tmp_path: Path) -> None:
    """Job 0's timeout falls due just as it answers and job 1 begins: the
    kill meant for job 0 ends job 1. Job 0 gets the JobTimeoutError; job 1,
    which began (so it is not run again), gets a WorkerCrashedError that
    says the worker was killed because an earlier job of its batch timed out."""
    events = _Events()
    ends = _Ends()
    with closing(_Fifos(tmp_path)) as fifo:
        fn = Gated(fifo.began_path, fifo.go_path)
        async with watched_worker(events) as worker:
            batch = Batch(payload(fn, [(0, "hold"), (1, "sleep")]), 2, ends)
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(worker._run_batch, batch, 30.0)
                    await fifo.said("0")
                    # From here to the timeout nothing of the parent runs: job 0's
                    # answer stays unread, as when the deadline and the answer cross.
                    fifo.release()
                    fifo.said_now("1")  # job 1 began
                    worker._job_timed_out()  # job 0's deadline, as the timer serves it
            assert not worker.alive
    timed_out = ends.by_position[0][1]
    assert isinstance(timed_out, procsup.JobTimeoutError)
    assert timed_out.timeout == 30.0
    value, followed = ends.by_position[1]
    assert value is None
    assert isinstance(followed, procsup.WorkerCrashedError)
    assert not isinstance(followed, procsup.JobTimeoutError)
    assert followed.phase == "job"
    assert "because an earlier job of its batch timed out" in str(followed)
    assert followed.__cause__ is timed_out
    assert_paired(events)
    assert [error for kind, error in events if kind == "job_finished"] == [timed_out, followed]
