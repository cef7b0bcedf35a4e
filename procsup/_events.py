"""Lifecycle events of a pool, for logs, callbacks and async iteration."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import attrs
import trio

if TYPE_CHECKING:
    from ._outcomes import PoolObserver

__all__ = ["EVENT_LEVELS", "EventHub", "PoolEvent"]

logger = logging.getLogger("procsup.pool")  # the scheme: see procsup._worker

EVENT_LEVELS = {
    "start": logging.DEBUG,
    "ready": logging.DEBUG,
    "start_failed": logging.WARNING,
    "job_started": logging.DEBUG,
    "job_finished": logging.DEBUG,
    "recycled": logging.DEBUG,  # the worker logs it at INFO, with its memory
    "exited": logging.DEBUG,
}


@attrs.frozen
class PoolEvent:
    """One thing that happened to a pool's worker.

    Attributes:
        kind: ``"start"`` (a child process was spawned), ``"ready"`` (its
            initializer returned), ``"start_failed"``, ``"job_started"``,
            ``"job_finished"``, ``"recycled"`` (after its job the worker used
            more than ``recycle_above_mb``: it retires gracefully and a new
            one replaces it) or ``"exited"`` (the process was reaped).
        pid: the worker's process id, where there is one.
        time: ``trio.current_time()`` when it happened.
        returncode: for ``"exited"``: how it ended (negative: that signal).
        error: for ``"start_failed"`` and failed ``"job_finished"``: the error.

    Each ``"job_started"`` is followed by exactly one ``"job_finished"``
    with the same ``pid``. A job sent (or, in a :meth:`Pool.map <procsup.Pool.map>` batch,
    next in line) that its worker then never began -- the worker died
    first, or the map took it back to run on another worker -- still gets
    one: its ``error`` is a :exc:`~procsup.WorkerError` with
    ``phase == "idle"`` that says so, and the job has a pair of events of
    its own where it runs.
    """

    kind: str
    pid: int | None
    time: float
    returncode: int | None = None
    error: BaseException | None = None

    def describe(self) -> str:
        """A one-line, human description (what the log line says)."""
        from ._errors import describe_exit

        text = f"worker pid={self.pid}: {self.kind.replace('_', ' ')}"
        if self.kind == "exited":
            text += f" ({describe_exit(self.returncode)})"
        if self.error is not None:
            text += f": {self.error}"
        return text


class EventHub:
    """Where a pool's events go: the ``procsup.pool`` logger, the pool's
    ``on_event`` callback, and every subscriber of :meth:`subscribe`."""

    def __init__(self, on_event: Callable[[PoolEvent], object] | None) -> None:
        self._on_event = on_event
        self._subscribers: list[trio.MemorySendChannel[PoolEvent]] = []  # open ones only
        self.observers: list[PoolObserver] = []  # procsup.metrics, told synchronously

    @asynccontextmanager
    async def subscribe(self, buffer: int) -> AsyncIterator[trio.MemoryReceiveChannel[PoolEvent]]:
        """Events from now until the block exits; past ``buffer`` undelivered
        ones, new ones are dropped for this subscriber."""
        send, receive = trio.open_memory_channel[PoolEvent](buffer)
        self._subscribers.append(send)
        try:
            yield receive
        finally:
            self._subscribers.remove(send)  # first: nothing may be sent to a closed one
            send.close()
            receive.close()

    def emit(
        self,
        kind: str,
        pid: int | None,
        *,
        returncode: int | None = None,
        error: BaseException | None = None,
    ) -> None:
        level = EVENT_LEVELS[kind]
        log = logger.isEnabledFor(level)
        if not (log or self._subscribers or self._on_event is not None or self.observers):
            return  # nobody listens: a one-shot worker has five events
        event = PoolEvent(kind, pid, trio.current_time(), returncode, error)
        for observer in self.observers:
            observer.event(event)
        if log:
            logger.log(level, "%s", event.describe())
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                logger.exception("on_event callback raised; ignored")
        for channel in self._subscribers:
            try:
                channel.send_nowait(event)
            except (trio.WouldBlock, trio.BrokenResourceError):  # full, or leaving
                pass
