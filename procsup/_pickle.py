"""The parent's side of what travels pickled: jobs out, results and
exceptions back.

Unpickling runs the sender's code (``__reduce__``, ``__setstate__``): it may
raise anything, ``SystemExit`` and ``KeyboardInterrupt`` included. Nothing it
raises or returns reaches the caller except as a value, the job's own
``Exception``, or a typed procsup error; it never reaches the pool.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import trio

from ._errors import RemoteError, RemoteTraceback, SerializationError
from ._wire import max_payload

__all__ = ["dump_job", "load_result", "rebuild_error"]


def dump_job(fn: Callable[..., Any], args: tuple[Any, ...], limit: int) -> bytes:
    """The pickled ``(fn, args)`` of a JOB frame.

    Raises:
        TypeError: ``fn`` is not callable.
        SerializationError: they do not pickle, or not within ``limit`` bytes.
    """
    if not callable(fn):
        raise TypeError(f"job must be callable, got {fn!r}")
    try:
        data = pickle.dumps((fn, args), pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise SerializationError(
            f"job {getattr(fn, '__qualname__', fn)!r} or its arguments cannot be pickled: {exc}; "
            "jobs must be module-level functions with picklable arguments"
        ) from exc
    if len(data) > max_payload(limit):
        raise SerializationError(
            f"job arguments pickle to {len(data)} bytes, over max_message_bytes={limit} "
            "(less the frame's own bytes)"
        )
    return data


# KI-protected: a KeyboardInterrupt raised in here comes from the payload,
# never from a Ctrl-C (trio delivers that at the next checkpoint instead).
@trio.lowlevel.enable_ki_protection
def load_result(data: bytes, loads: Callable[[bytes], Any] = pickle.loads) -> Any:
    """Unpickle a job's result (with ``loads``: ``_shm``'s for a result
    whose buffers are in shared memory).

    Raises:
        SerializationError: unpickling raised anything at all.
    """
    try:
        return loads(data)
    except BaseException as exc:  # noqa: BLE001 -- the sender's code; SystemExit too
        raise SerializationError(
            f"the job's result could not be unpickled in the parent: {_describe(exc)}"
        ) from (exc if isinstance(exc, Exception) else None)


@trio.lowlevel.enable_ki_protection
def rebuild_error(type_name: str, message: str, tb: str, data: bytes) -> Exception:
    """The exception a job raised, to raise in its caller, with the worker's
    traceback as ``__cause__``: the job's own when it is an ``Exception``
    that unpickles and takes the attributes raising it sets, else
    :class:`RemoteError` (a BaseException such as trio.Cancelled is never
    raised in the parent as itself)."""
    cause = RemoteTraceback(tb) if tb else None
    if data:
        try:
            exc = pickle.loads(data)
            if isinstance(exc, Exception):
                exc.__cause__ = cause
                # What contextlib and trio assign on the way up: a frozen
                # dataclass refuses it, and would fail there instead.
                exc.__traceback__ = None
                return exc
        except BaseException:  # noqa: BLE001 -- the sender's code; SystemExit too
            pass
    error = RemoteError(type_name, message, tb)
    error.__cause__ = cause
    return error


def _describe(exc: BaseException) -> str:
    try:
        return f"{type(exc).__qualname__}: {exc}"
    except BaseException:  # noqa: BLE001 -- a broken __str__ must not lose the error
        return type(exc).__qualname__
