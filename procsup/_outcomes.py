"""How a pool's jobs end, and what it reports to observers (``procsup.metrics``).

Parent side only. The pool counts every job under one outcome (see
:data:`OUTCOMES`, :attr:`procsup.PoolStatistics.jobs_by_outcome`), and tells
its observers every event and how long each acquirer waited; with no
observer, it measures nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import trio

from ._errors import MemoryLimitError, WorkerClosedError, WorkerError

if TYPE_CHECKING:
    from ._events import PoolEvent

__all__ = ["OUTCOMES", "PoolObserver", "job_outcome"]

OUTCOMES = ("ok", "error", "crashed", "timeout", "cancelled", "memory")


def job_outcome(error: BaseException | None) -> str:
    """One of :data:`OUTCOMES` for a job that ended with ``error`` (or returned):

    * ``ok``: it returned; ``error``: it raised (or its arguments or result
      did not travel);
    * ``memory``: the worker was killed over ``memory_limit_mb``;
    * ``timeout``: the job ran past its timeout (an error that is both a
      :exc:`~procsup.WorkerError` and a :exc:`TimeoutError`);
    * ``cancelled``: its caller was cancelled, or the pool stopped the worker
      (:exc:`~procsup.WorkerClosedError`: closing or draining, or a map
      batch's job taken back before it began);
    * ``crashed``: the worker died or was killed for any other reason
      (crash, ping timeout, protocol violation, an earlier batch job's
      timeout).
    """
    if error is None:
        return "ok"
    if isinstance(error, MemoryLimitError):
        return "memory"
    if isinstance(error, WorkerError) and isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, (trio.Cancelled, WorkerClosedError, KeyboardInterrupt)):
        return "cancelled"
    if isinstance(error, WorkerError):
        return "crashed"
    return "error"


class PoolObserver(Protocol):
    """Told what happens in a pool as it happens, in the pool's trio thread
    (so it must be quick and must not raise)."""

    def event(self, event: PoolEvent) -> None:
        """Every event of the pool (as ``on_event`` gets them)."""

    def acquired(self, seconds: float) -> None:
        """An acquirer got a worker after waiting ``seconds``."""
