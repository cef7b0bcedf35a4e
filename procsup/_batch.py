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

Why batches, not a second JOB queued on each worker before the first one's
RESULT: a queued JOB still costs a frame, a pickled function and a task
round trip in the parent per job, and a worker that holds two jobs needs a
second job slot in all of its bookkeeping; a batch is one job slot whose id
moves on, and costs per job only its argument's pickle and its answer.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

from . import _wire
from ._errors import SerializationError
from ._pickle import dump_by_reference_or_value
from ._wire import Kind
from ._worker import _Job

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


class Batch(_Job):
    """Jobs of one function in one BATCH order. To the worker it is one job
    whose ``id`` is that of the job running now: an answer ends that job
    (``on_job``) and the next one becomes the job; the batch is settled once
    every job has ended or been reported unstarted."""

    __slots__ = ("_begun", "_first", "_job_over", "_on_job", "count", "payload")

    def __init__(self, payload: bytes, count: int, on_job: OnJob) -> None:
        super().__init__(0)
        self.payload = payload
        self.count = count
        self._on_job = on_job
        self._first = 0
        self._begun = 0  # jobs the worker began: those that ended, and one running
        self._job_over: JobOver | None = None

    def start(self, first_id: int, job_over: JobOver) -> bytes:
        """Its frame, with job ids ``first_id`` on; ``job_over`` hears of each job's end."""
        self.id = self._first = first_id
        self._job_over = job_over
        return _wire.encode(Kind.BATCH, first_id, self.count, self.payload)

    def succeed(self, value: Any) -> None:
        self._end_one(value, None)

    def fail(self, error: BaseException) -> None:
        self._end_one(None, error)

    def _end_one(self, value: Any, error: BaseException | None) -> None:
        position = self.id - self._first
        self._begun = position + 1
        next_begins = self._begun < self.count
        assert self._job_over is not None
        self._job_over(self, error, next_begins)
        self._on_job(position, value, error)
        if next_begins:
            self.id += 1
            self.answered = False
        else:
            self._settle()

    def lost(
        self,
        last_begun: int,
        unstarted_error: Callable[[], BaseException],
        caller_error: Callable[[], BaseException],
    ) -> bool:
        while not self.settled and self.id <= last_begun:  # begun: the crash's error
            self._end_one(None, caller_error())
        if not self.settled:
            assert self._job_over is not None
            self._job_over(self, unstarted_error(), False)  # its job_started had gone out
            for position in range(self.id - self._first, self.count):
                self._on_job(position, UNSTARTED, None)
            self._settle()
        return False  # the worker's own "unstarted" is for a single job

    def jobs_begun(self, unstarted: bool) -> int:
        return self._begun
