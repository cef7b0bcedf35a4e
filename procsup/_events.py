"""Lifecycle events of a pool, for logs, callbacks and async iteration."""

from __future__ import annotations

import logging

import attrs

__all__ = ["EVENT_LEVELS", "PoolEvent"]

EVENT_LEVELS = {
    "start": logging.DEBUG,
    "ready": logging.DEBUG,
    "start_failed": logging.WARNING,
    "job_started": logging.DEBUG,
    "job_finished": logging.DEBUG,
    "exited": logging.DEBUG,
}


@attrs.frozen
class PoolEvent:
    """One thing that happened to a pool's worker.

    Attributes:
        kind: ``"start"`` (a child process was spawned), ``"ready"`` (its
            initializer returned), ``"start_failed"``, ``"job_started"``,
            ``"job_finished"`` or ``"exited"`` (the process was reaped).
        pid: the worker's process id, where there is one.
        time: ``trio.current_time()`` when it happened.
        returncode: for ``"exited"``: how it ended (negative: that signal).
        error: for ``"start_failed"`` and failed ``"job_finished"``: the error.
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
