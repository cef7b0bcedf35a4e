"""The exception hierarchy.

Standard library only: the child side may import this module too.

Every worker error carries the facts a user needs to act on it: the worker
``pid``, the ``phase`` it was in (``init``, ``idle``, ``job`` or ``shutdown``),
how the process ended (``exit_code`` or ``signal_name``, when it has ended) and
the setting that fired, if one did.
"""

from __future__ import annotations

import signal as _signal
from collections.abc import Sequence

__all__ = [
    "DescriptorLimitError",
    "JobTimeoutError",
    "MemoryLimitError",
    "NoWorkerAvailableError",
    "PoolClosedError",
    "ProcsupError",
    "ProtocolError",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "UnsupportedPlatformError",
    "WorkerClosedError",
    "WorkerCrashedError",
    "WorkerError",
    "WorkerStartError",
    "WorkerUnresponsiveError",
    "describe_exit",
]


def describe_exit(returncode: int | None) -> str:
    """Say how a process ended, from a :mod:`subprocess`-style return code."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        return f"killed by {signal_name(-returncode)}"
    return f"exit code {returncode}"


def signal_name(signum: int) -> str:
    try:
        return _signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class ProcsupError(Exception):
    """Base class of every error procsup raises."""


class UnsupportedPlatformError(ProcsupError):
    """procsup cannot supervise processes on this platform (Windows)."""


class SerializationError(ProcsupError):
    """A job's arguments or result could not be pickled or unpickled.

    Raised in the parent before anything is sent when the arguments do not
    pickle; raised for one job when its result does not travel. The worker
    stays usable if it has jobs left.
    """


class DescriptorLimitError(ProcsupError):
    """A pool needs more file descriptors than this process may open, even
    after raising its soft ``RLIMIT_NOFILE`` to the hard limit.

    Attributes:
        needed: descriptors the pool would need (an estimate).
        soft, hard: the limits in force when it was refused.
    """

    def __init__(self, message: str, *, needed: int, soft: int, hard: int) -> None:
        super().__init__(message)
        self.needed = needed
        self.soft = soft
        self.hard = hard

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only arguments do not survive the default exception pickling.
        return (_rebuild_descriptor_limit, (str(self), self.needed, self.soft, self.hard))


def _rebuild_descriptor_limit(
    message: str, needed: int, soft: int, hard: int
) -> DescriptorLimitError:
    return DescriptorLimitError(message, needed=needed, soft=soft, hard=hard)


class PoolClosedError(ProcsupError):
    """The pool was used after (or while) its ``async with`` block exited."""


class WorkerError(ProcsupError):
    """Something happened to one worker process.

    Attributes:
        pid: the worker's process id (``None`` if it never started).
        phase: ``"init"``, ``"idle"``, ``"job"`` or ``"shutdown"``.
        returncode: how the process ended, :mod:`subprocess`-style (negative
            for a signal), or ``None`` while it still runs.
        setting: the option that fired, e.g. ``"init_timeout=10s"``.
    """

    def __init__(
        self,
        what: str,
        *,
        pid: int | None,
        phase: str,
        returncode: int | None = None,
        setting: str | None = None,
    ) -> None:
        self.what = what
        self.pid = pid
        self.phase = phase
        self.returncode = returncode
        self.setting = setting
        super().__init__(self._message())

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only arguments do not survive the default exception pickling.
        return (_rebuild_worker_error, (type(self), self.__dict__.copy()))

    @property
    def exit_code(self) -> int | None:
        """The process's exit code, if it exited on its own."""
        rc = self.returncode
        return rc if rc is not None and rc >= 0 else None

    @property
    def signal_name(self) -> str | None:
        """The name of the signal that killed the process, e.g. ``"SIGKILL"``."""
        rc = self.returncode
        return signal_name(-rc) if rc is not None and rc < 0 else None

    def _message(self) -> str:
        parts = [f"worker pid={self.pid}", f"phase={self.phase}"]
        if self.returncode is not None:
            parts.append(describe_exit(self.returncode))
        if self.setting:
            # a timeout elapses; a limit (memory_limit_mb=...) is exceeded
            verb = "elapsed" if "timeout" in self.setting else "exceeded"
            parts.append(f"{self.setting} {verb}")
        return f"{self.what} ({', '.join(parts)})"


def _rebuild_worker_error(cls: type[WorkerError], state: dict[str, object]) -> WorkerError:
    err = cls.__new__(cls)
    err.__dict__.update(state)
    Exception.__init__(err, err._message())
    return err


class WorkerStartError(WorkerError):
    """Initialization failed: the initializer raised, the child exited, or
    ``init_timeout`` elapsed. The child has been killed and reaped.

    Attributes:
        remote_type: the initializer's exception type name, if it raised.
        remote_traceback: its traceback text from the child, if it raised.
    """

    remote_type: str | None = None
    remote_traceback: str | None = None


class WorkerCrashedError(WorkerError):
    """The worker process died (or vanished) while it owed us an answer."""


class WorkerClosedError(WorkerError):
    """The worker was shut down or retired; it takes no more jobs."""


class WorkerUnresponsiveError(WorkerError):
    """The worker did not answer a ping within ``ping_timeout`` and was killed."""


class JobTimeoutError(WorkerError, TimeoutError):
    """A job ran past the ``timeout`` its caller gave (counted from when it
    reached a worker): it was stopped (a cancel request, then SIGKILL after
    ``cancel_grace``) and its worker reaped.

    Attributes:
        timeout: the timeout that elapsed, in seconds.
    """

    timeout: float = 0.0


class MemoryLimitError(WorkerError):
    """The worker's memory passed ``memory_limit_mb`` and it was killed.

    Attributes:
        measured_mb: the figure that crossed the limit.
        limit_mb: the limit.
        metric: ``"pss"``, ``"uss"`` or ``"rss"``: what was measured.
    """

    measured_mb: float = 0.0
    limit_mb: float = 0.0
    metric: str = "rss"


class ProtocolError(WorkerError):
    """The worker broke the wire protocol (garbage, oversized or unexpected
    frame, or closed its channel); it was killed."""


class NoWorkerAvailableError(ProcsupError):
    """No warm worker could be had within ``max_acquire_attempts`` or
    ``acquire_timeout``.

    Attributes:
        start_errors: the start failures seen while waiting (newest last).
    """

    def __init__(self, message: str, start_errors: Sequence[BaseException] = ()) -> None:
        self.start_errors = list(start_errors)
        if self.start_errors:
            message = f"{message}; last start error: {self.start_errors[-1]}"
        super().__init__(message)


class RemoteError(ProcsupError):
    """A job raised an exception that is not an ``Exception`` (e.g.
    ``KeyboardInterrupt``, a pickled ``trio.Cancelled``) or could not be
    re-created in the parent.

    Attributes:
        type_name: the qualified name of the exception type in the child.
        message: ``str()`` of the exception in the child.
        remote_traceback: the traceback text from the child.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback
        super().__init__(f"{type_name}: {message}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.type_name, self.message, self.remote_traceback))


class RemoteTraceback(Exception):
    """Carries a child's traceback text; set as ``__cause__`` of a job's error."""

    def __init__(self, text: str) -> None:
        self.text = text
        super().__init__(text)

    def __str__(self) -> str:
        return f"\n\nTraceback in the worker process:\n{self.text}"
