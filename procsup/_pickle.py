"""The parent's side of what travels pickled: jobs out, results and
exceptions back.

Jobs and initializers go by reference (module and name) with the standard
pickle; one that cannot (a lambda, a closure, a function of an interactive
``__main__``) goes by value with cloudpickle, when it is installed. The worker
imports cloudpickle only to unpickle such a payload.

Unpickling runs the sender's code (``__reduce__``, ``__setstate__``): it may
raise anything, ``SystemExit`` and ``KeyboardInterrupt`` included. Nothing it
raises or returns reaches the caller except as a value, the job's own
``Exception``, or a typed procsup error; it never reaches the pool.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable
from typing import Any

import trio

from ._errors import RemoteError, RemoteTraceback, SerializationError
from ._process import parent_main_reference
from ._wire import max_payload

__all__ = ["dump_by_reference_or_value", "dump_job", "load_result", "rebuild_error"]

_BY_VALUE_ADVICE = (
    "a worker finds a job or initializer by its module and name: move it to a module "
    "(a module-level def that the worker can import), or install the extra "
    "procsup[cloudpickle] to send it by value"
)


def dump_by_reference_or_value(fn: object, obj: object) -> bytes:
    """Pickle ``obj`` (``fn`` itself, or a job's ``(fn, args)``): by reference
    with the standard pickle, or by value with cloudpickle when ``fn`` cannot
    go by reference.

    Raises:
        SerializationError: ``fn`` cannot go by reference and cloudpickle is
            not installed; the message says what to do.
        Exception: whatever pickling raised for a value that neither can
            pickle (an argument holding a lock, say).
    """
    reason = _not_importable_in_a_worker(fn)
    if reason is None:
        try:
            return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            reason = _not_by_reference(fn, exc)
            if reason is None:
                raise  # fn is fine: the arguments are at fault
    try:
        import cloudpickle  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        raise SerializationError(
            f"{_name(fn)} cannot be pickled by reference ({reason}); {_BY_VALUE_ADVICE}"
        ) from None
    return cloudpickle.dumps(obj, pickle.HIGHEST_PROTOCOL)  # type: ignore[no-any-return,unused-ignore]


def _not_importable_in_a_worker(fn: object) -> str | None:
    """Why a worker could not import ``fn`` by the name pickle gives it
    (its ``__main__`` has no file), or None."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if getattr(fn, "__module__", None) == "__main__" and not main_importable():
        return "it is defined in __main__ of an interactive session, python -c or stdin"
    return None


@functools.cache
def main_importable() -> bool:
    # Once per process (a stat per job otherwise): __main__ does not move.
    return bool(parent_main_reference())


def _not_by_reference(fn: object, error: Exception) -> str | None:
    """Why ``fn`` does not pickle by reference, or None when it does."""
    try:
        pickle.dumps(fn, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 -- any failure of its own says the same
        return str(exc) or str(error)
    return None


def _name(fn: object) -> str:
    qualname = getattr(fn, "__qualname__", None)
    return qualname if isinstance(qualname, str) else repr(fn)


def dump_job(fn: Callable[..., Any], args: tuple[Any, ...], limit: int) -> bytes:
    """The pickled ``(fn, args)`` of a JOB frame.

    Raises:
        TypeError: ``fn`` is not callable.
        SerializationError: they do not pickle, or not within ``limit`` bytes.
    """
    if not callable(fn):
        raise TypeError(f"job must be callable, got {fn!r}")
    try:
        data = dump_by_reference_or_value(fn, (fn, args))
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError(
            f"job {_name(fn)!r} or its arguments cannot be pickled: {exc}; "
            "arguments travel by value and must pickle"
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
