"""The queue's errors, as a producer sees them."""

from __future__ import annotations

from typing import Any

from .._errors import ProcsupError

__all__ = ["DEFAULT_MAX_BODY_BYTES", "BodyTooLargeError", "QueueFullError", "RemoteJobError"]
__all__ += ["error_fields"]

DEFAULT_MAX_BODY_BYTES = 1024 * 1024  # bytes of JSON one job's argument may take


class BodyTooLargeError(ProcsupError, ValueError):
    """:meth:`Queue.submit` refused an argument whose JSON is over
    ``max_body_bytes``. Nothing was enqueued.

    Every entry's body lives in Redis's memory until its job finishes: pass a
    reference (a path, a URL, an object-store key) to large data instead.
    A host dead-letters (``too_large``), without running it, an entry over
    its own ``max_body_bytes`` that another producer wrote.

    Attributes:
        size: the body's size, in bytes (UTF-8 JSON).
        max_body_bytes: the limit.
    """

    def __init__(self, size: int, max_body_bytes: int) -> None:
        self.size = size
        self.max_body_bytes = max_body_bytes
        super().__init__(
            f"the job's argument is {size:,} bytes of JSON, over max_body_bytes "
            f"{max_body_bytes:,}; nothing was enqueued: pass a reference (a path, a URL, a "
            "key) to large data, or raise max_body_bytes on open_queue and on the hosts"
        )


class QueueFullError(ProcsupError):
    """:meth:`Queue.submit` found the queue's backlog at ``max_backlog``.

    Nothing was enqueued. Retry later, or add hosts (the backlog is
    ``procsup queue status``'s first figure).

    Attributes:
        length: the entries in the queue when the submit was refused.
        max_backlog: the limit.
    """

    def __init__(self, queue: str, length: int, max_backlog: int) -> None:
        self.length = length
        self.max_backlog = max_backlog
        super().__init__(
            f"queue {queue!r} is full: {length} entries, max_backlog {max_backlog}; "
            "nothing was enqueued, retry later or add hosts"
        )


class RemoteJobError(ProcsupError):
    """A job run through a queue failed; raised by :meth:`Queue.result`.

    Attributes:
        job_id: the job's id.
        type: the error's type name (e.g. ``"ValueError"``, ``"WorkerCrashedError"``,
            ``"TimeoutError"``, ``"ExpiredError"``, ``"LeaseExpiredError"``).
        message: the error's message.
        phase: where it failed (``"job"``, ``"queue"``, ``"input"``, ``"output"``,
            or a worker phase), or None.
        exit_code: the worker's exit code, if it exited.
        signal: the signal that killed the worker (e.g. ``"SIGKILL"``), if one did.
        deliveries: how many times the job was delivered to a host.
        host: the host (consumer name) that published this outcome.
    """

    def __init__(self, record: dict[str, Any]) -> None:
        error = record.get("error") or {}
        self.job_id: str = record.get("id", "")
        self.type: str = error.get("type") or "Error"
        self.message: str = error.get("message") or ""
        self.phase: str | None = error.get("phase")
        self.exit_code: int | None = error.get("exit_code")
        self.signal: str | None = error.get("signal")
        self.deliveries: int = record.get("deliveries") or 0
        self.host: str = record.get("host") or ""
        super().__init__(
            f"job {self.job_id} failed on {self.host or 'a host'} "
            f"(delivery {self.deliveries}): {self.type}: {self.message}"
        )


def error_fields(type_: str, message: str, phase: str | None) -> dict[str, Any]:
    """The ``error`` object of a result record (the ``procsup run`` format),
    for an error that no worker raised."""
    return {"type": type_, "message": message, "phase": phase, "exit_code": None, "signal": None}
