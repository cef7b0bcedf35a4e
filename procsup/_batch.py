"""Jobs of one function sent to a worker as one BATCH order (for :meth:`Pool.map`).

A batch pickles its function once and each input on its own; the worker
runs the jobs one after another and answers each as soon as it ends, as the
job it is (ids ``first``, ``first + 1``, ...), so:

* every job keeps its own result or error, its own ``timeout`` (armed when
  the job before it has answered) and a job's events;
* when the process dies, the start mark names the job it was running: the
  jobs before it have answered, that one (and any between, whose answers
  went with the process) gets the crash's error, and the ones after it never
  began: they are reported *unstarted*, to run elsewhere, and count nowhere.
  When the kill was for a job's timeout, only that job gets the
  JobTimeoutError; a job after it that began as the kill came gets a
  WorkerCrashedError that says so (it is not run again);
* a job's events: the parent never hears a job begin, so the next job is
  announced (``job_started``) when the one before it answers. Whatever then
  ends it -- its answer, the crash, or a TRIM that takes it back before it
  began -- gives it its one ``job_finished``.

Why batches, not a second JOB queued on each worker before the first one's
RESULT: a queued JOB still costs a frame, a pickled function and a task
round trip in the parent per job, and a worker that holds two jobs needs a
second job slot in all of its bookkeeping; a batch is one job slot whose id
moves on, and costs per job only its argument's pickle and its answer.
"""

from __future__ import annotations

import collections
import pickle
from collections.abc import Callable
from typing import Any

import trio

from . import _wire
from ._errors import JobTimeoutError, SerializationError, WorkerCrashedError
from ._job import _Job
from ._pickle import dump_by_reference_or_value
from ._wire import Kind

__all__ = ["UNSTARTED", "Batch", "pickle_argument"]

UNSTARTED: Any = object()
"""The value a batch reports for a job the worker never began."""

# (position in the batch, value or UNSTARTED, error): a job's end
OnJob = Callable[[int, Any, BaseException | None], None]
# the worker's side of a job's end (Worker._batch_job_over): (batch, error, next begins)
JobOver = Callable[[_Job, BaseException | None, bool], None]


def pickle_argument(item: object) -> bytes | None:
    """A batch job's pickled argument; None when it does not pickle with the
    standard pickle (it then runs alone, as :meth:`Pool.run` would send it)."""
    try:
        return pickle.dumps(item, pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 -- run alone, it gets pool.run's own error
        return None


def batch_payload(fn: Callable[[Any], Any], arguments: list[bytes]) -> bytes:
    """The BATCH payload: ``fn`` (by reference, or by value with cloudpickle)
    and the pickled arguments.

    Raises:
        SerializationError: ``fn`` does not pickle.
    """
    try:
        return dump_by_reference_or_value(fn, (fn, arguments))
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError(f"map's function {fn!r} cannot be pickled: {exc}") from exc


def _killed_for(timed_out: JobTimeoutError, phase: str) -> Callable[[], BaseException]:
    """The error of a job after the one that timed out in its batch: the
    kill meant for that one (``timed_out`` is its error) ended this one too.
    ``phase`` ``"job"``: it had begun, so it is not run again; ``"idle"``:
    it had not, and runs on another worker."""
    fate = (
        "had begun, so it is not run again" if phase == "job" else "never began: it runs elsewhere"
    )
    what = f"worker was killed because an earlier job of its batch timed out; this job {fate}"

    def error() -> BaseException:
        crashed = WorkerCrashedError(
            what, pid=timed_out.pid, phase=phase, returncode=timed_out.returncode
        )
        crashed.__cause__ = timed_out
        return crashed

    return error


class Batch(_Job):
    """Jobs of one function in BATCH orders to one worker. To the worker it
    is one job whose ``id`` is that of the job running now: an answer ends
    that job (``on_job``, with its position in the batch, counted over every
    order) and the next one becomes the job. :meth:`extend` queues another
    order behind the ones sent, so the worker never waits for the next;
    the batch is settled once every job has ended or been reported unstarted."""

    __slots__ = (
        "_ended",
        "_job_over",
        "_on_job",
        "_orders",
        "_total",
        "job_began",
        "low",
        "low_mark",
        "payload",
        "trim_after",
        "trim_sent",
    )

    def __init__(
        self, payload: bytes, count: int, on_job: OnJob, trim_after: float | None = None
    ) -> None:
        super().__init__(0)
        # Once a job has run trim_after seconds (from when the one before
        # it answered), the worker is asked for the jobs after it (TRIM):
        # a slow job holds back nothing longer than that.
        self.trim_after = trim_after
        self.job_began = 0.0  # when the running job began, as the parent saw it
        self.trim_sent = False
        self.payload = payload  # the first order's (for start)
        self._on_job = on_job
        # the orders not yet run to their end: [first id, count, position of the first]
        self._orders: collections.deque[list[int]] = collections.deque()
        self._total = count  # jobs in every order sent
        self._ended = 0  # jobs that ended (their position: 0 to _ended - 1)
        self._job_over: JobOver | None = None
        self.low: trio.Event | None = None  # set once at most low_mark jobs are left
        self.low_mark = 0

    @property
    def count(self) -> int:
        """Jobs in every order sent."""
        return self._total

    def start(self, first_id: int, job_over: JobOver) -> bytes:
        """The first order, with job ids ``first_id`` on; ``job_over`` hears of each job's end."""
        self.id = first_id
        self._orders.append([first_id, self._total, 0])
        self._job_over = job_over
        return _wire.encode(Kind.BATCH, first_id, self._total, self.payload)

    def extend(self, first_id: int, count: int, payload: bytes) -> bytes:
        """Another order for the batch, ``count`` jobs with ids ``first_id`` on
        (higher than every id before): positions from :attr:`count` on."""
        self._orders.append([first_id, count, self._total])
        self._total += count
        return _wire.encode(Kind.BATCH, first_id, count, payload)

    def watch_low(self, mark: int) -> trio.Event:
        """An event set once at most ``mark`` jobs are left to end (or it is over)."""
        low = trio.Event()
        if self.settled or self._total - self._ended <= mark:
            low.set()
        else:
            self.low, self.low_mark = low, mark
        return low

    def succeed(self, value: Any) -> None:
        self._end_one(value, None)

    def fail(self, error: BaseException) -> None:
        self._end_one(None, error)

    def _end_one(self, value: Any, error: BaseException | None) -> None:
        order = self._orders[0]
        first, count, base = order
        position = base + self.id - first
        self._ended = position + 1
        if self.id + 1 == first + count:
            self._orders.popleft()
        next_begins = bool(self._orders)
        assert self._job_over is not None
        self._job_over(self, error, next_begins)
        self._on_job(position, value, error)
        if self.low is not None and self._total - self._ended <= self.low_mark:
            self.low.set()
            self.low = None
        if next_begins:
            self.id = self.id + 1 if self.id + 1 < first + count else self._orders[0][0]
            self.answered = False
            if self.trim_after is not None:
                self.job_began = trio.current_time()
        else:
            self._settle()

    @property
    def last_id(self) -> int:
        first, count, _ = self._orders[-1]
        return first + count - 1

    def trim_at(self) -> float | None:
        if self.trim_after is None or self.trim_sent or self.id >= self.last_id:
            return None
        return self.job_began + self.trim_after

    def trim_order(self) -> bytes:
        self.trim_sent = True
        return _wire.encode(Kind.TRIM, self.id, self.last_id)

    def give_back_from(self, first: int, given_back: Callable[[], BaseException]) -> bool:
        if not self.trim_sent or self.trim_after is None or first < self.id:
            return False
        self.trim_after = None  # one TRIMMED per batch (trim_sent stays)
        kept = self._total  # the position of job id `first`: jobs before it stay
        for order in self._orders:
            start, count, base = order
            if first < start + count:
                kept = base + max(first - start, 0)
                break
        for position in reversed(range(kept, self._total)):  # each goes first: keep their order
            self._on_job(position, UNSTARTED, None)
        while self._orders and self._orders[-1][2] >= kept:
            self._orders.pop()
        if self._orders:
            start, count, base = self._orders[-1]
            self._orders[-1][1] = min(count, kept - base)
        self._total = kept
        if self._ended >= kept:  # its running job was one of them (it never began)
            self._orders.clear()
            assert self._job_over is not None
            self._job_over(self, given_back(), False)  # its job_started had gone out
            self._settle()
        return True

    def lost(
        self,
        last_begun: int,
        unstarted_error: Callable[[], BaseException],
        caller_error: Callable[[], BaseException],
    ) -> bool:
        timed_out = self.expired  # then the job running now is the one that timed out
        while not self.settled and self.id <= last_begun:  # begun: the crash's error
            error = caller_error()
            self._end_one(None, error)
            if timed_out and isinstance(error, JobTimeoutError):
                # the ones after it began as the kill came: it was not theirs
                caller_error = _killed_for(error, "job")
                unstarted_error = _killed_for(error, "idle")
            timed_out = False
        if not self.settled:
            assert self._job_over is not None
            self._job_over(self, unstarted_error(), False)  # its job_started had gone out
            for position in range(self._ended, self._total):
                self._on_job(position, UNSTARTED, None)
            self._settle()
        return False  # the worker's own "unstarted" is for a single job

    def jobs_begun(self, unstarted: bool) -> int:
        return self._ended

    def _settle(self) -> None:
        super()._settle()
        if self.low is not None:  # whoever waits to extend it: it is over
            self.low.set()
            self.low = None
