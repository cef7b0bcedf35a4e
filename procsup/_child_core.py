"""The child side's core, shared by :mod:`procsup._child` (a worker without
a loop), :mod:`procsup._child_loop` (a worker with one), :mod:`procsup._child_jobs`
and :mod:`procsup._shm`: the state a job sees (what the initializer returned,
how to stop the running job), the interruption that stops it, calling an
initializer or a job, reading the next order, and an exception's
description, cut to fit a frame.

Child side: imports what :mod:`procsup._child` does, nothing more (``pickle``,
``traceback``, ``importlib``, ``trio`` when first needed), and no other
procsup module.
"""

from __future__ import annotations

import _signal as signal  # type: ignore[import-not-found,unused-ignore]
import _thread
import os

TYPE_CHECKING = False  # not typing's: see _child
if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from typing import Any, NoReturn, TypeGuard

    from ._child_io import _FrameReader

__all__ = ["has_large_buffer", "is_coroutine"]

# Set by a worker's life (procsup._child's run and _serve, the loop's _Life,
# the control thread); read by the functions below and procsup.worker_state().
_NO_STATE = object()
_state: object = _NO_STATE
_canceller: Callable[[int], None] | None = None  # called with the id of the job to stop
_cancel_requested = False
_main_thread = 0


def set_state(state: object) -> None:
    """The initializer's return value: what the jobs see (procsup.worker_state())."""
    global _state
    _state = state


def set_canceller(canceller: Callable[[int], None] | None) -> None:
    """Who stops the running job when a CANCEL comes (None: nobody)."""
    global _canceller
    _canceller = canceller


def set_main_thread() -> None:
    """The calling thread runs the jobs: SIGTERM interrupts it."""
    global _main_thread
    _main_thread = _thread.get_ident()


class _Interrupted(BaseException):
    """Raised in the main thread to stop a job (cancel request or SIGTERM)."""


def _begin_job() -> None:
    """From here a cancellation interrupts the job; one that came first
    (the control thread sets the flag, then reads the canceller: one of the
    two sees the other) stops it before any of its code runs."""
    global _canceller
    _canceller = _interrupt_main
    if _cancel_requested:
        raise _Interrupted


def _initializer(payload: bytes) -> Callable[[], Any] | None:
    initializer = _loads(payload) if payload else None
    if isinstance(initializer, str):
        initializer = _resolve(initializer)
    return initializer


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    result = fn(*args)
    if is_coroutine(result):
        return _run_coroutine(result)
    return result


def is_coroutine(obj: object) -> TypeGuard[Coroutine[Any, Any, Any]]:
    """True for what calling an ``async def`` function returns (without
    importing inspect)."""
    return type(obj).__name__ == "coroutine" and hasattr(obj, "__await__")


def _run_coroutine(coro: Any) -> Any:
    """Run an async job or initializer under trio, cancellable from the reader."""
    global _canceller
    import trio

    async def run() -> Any:
        global _canceller
        token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as scope:
            _canceller = lambda job_id: token.run_sync_soon(scope.cancel)  # noqa: E731
            return await coro
        raise _Interrupted

    previous = _canceller
    try:
        return trio.run(run)
    finally:
        _canceller = previous


def _loads(payload: bytes | Callable[[], Any]) -> Any:
    if not isinstance(payload, bytes):
        return payload()  # a loader of _shm's
    import pickle

    return pickle.loads(payload)


_SCALARS = frozenset({int, float, str, bool, type(None)})


_SCANNED_ITEMS = 64  # of each tuple, list or dict: a large buffer is looked for in these


def has_large_buffer(obj: object, min_bytes: int, depth: int = 2) -> bool:
    """True when ``obj`` is, or holds ``depth`` levels down in tuples, lists
    and dicts (the first 64 items of each), a ``bytes``, ``bytearray``,
    ``memoryview`` or array (``__array_interface__``: NumPy) of at least
    ``min_bytes``. Cheap: it decides whether :mod:`procsup._shm` is needed."""
    kind = type(obj)
    if kind in _SCALARS:
        return False
    if kind is bytes or kind is bytearray:
        return len(obj) >= min_bytes  # type: ignore[arg-type]
    if kind is tuple or kind is list or kind is dict:
        if depth:
            items: Any = obj.values() if kind is dict else obj  # type: ignore[attr-defined]
            for count, item in enumerate(items):
                if count == _SCANNED_ITEMS:
                    break
                if has_large_buffer(item, min_bytes, depth - 1):
                    return True
        return False
    if kind is memoryview:
        return bool(obj.nbytes >= min_bytes)  # type: ignore[attr-defined]
    if hasattr(kind, "__array_interface__"):
        return bool(getattr(obj, "nbytes", 0) >= min_bytes)
    return False


def _resolve(spec: str) -> Callable[..., Any]:
    import importlib

    module_name, _, attr = spec.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{spec!r} is not callable")
    return target  # type: ignore[no-any-return]


def _type_name(obj: object) -> str:
    cls = type(obj)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def _describe(
    exc: BaseException, *, room: int, with_traceback: bool = True
) -> tuple[str, str, str, bytes]:
    """(type name, message, traceback text, pickled exception or b""), in
    at most ``room`` bytes of encoded fields (see :func:`_fit_description`).

    Never raises but _Interrupted: the exception's own code (``__str__``,
    ``__reduce__``, its unpickling) may raise anything, SystemExit included.
    Only an ``Exception`` is pickled: the parent raises nothing else as itself.
    """
    import pickle

    message = _safe_str(exc)
    tb = _format_traceback(exc) if with_traceback else ""
    data = b""
    if isinstance(exc, Exception):
        try:
            data = pickle.dumps(exc, pickle.HIGHEST_PROTOCOL)
            pickle.loads(data)  # what does not round-trip here will not in the parent
        except _Interrupted:
            raise
        except BaseException:  # noqa: BLE001
            data = b""
    return _fit_description(room, _type_name(exc), message, tb, data)


_FIELD_LENGTH = 4  # before every str and bytes field


_MIN_TRACEBACK = 4096  # less than this, and the exception goes without its pickle


_MAX_NAME = 1024


def _fit_description(
    room: int, type_name: str, message: str, tb: str, data: bytes
) -> tuple[str, str, str, bytes]:
    """Cut an exception's description to ``room`` bytes of encoded fields:
    first its traceback (it arrives as itself), else it goes without its
    pickle (as RemoteError) and message and traceback share the room. The
    type name always goes."""
    name = _utf8(type_name)[:_MAX_NAME].decode("utf-8", "ignore")
    text, trace = _utf8(message), _utf8(tb)
    room -= 4 * _FIELD_LENGTH + len(_utf8(name))
    if len(text) + len(trace) + len(data) <= room:
        return name, message, tb, data
    trace_room = room - len(text) - len(data)
    if data and trace_room >= min(len(trace), _MIN_TRACEBACK):
        return name, message, _cut(trace, trace_room), data
    text_room, trace_room = _share(max(room, 0), len(text), len(trace))
    return name, _cut(text, text_room), _cut(trace, trace_room), b""


def _share(room: int, a: int, b: int) -> tuple[int, int]:
    """Split ``room`` between two sizes: the smaller whole if it takes at
    most half, else half each."""
    if a + b <= room:
        return a, b
    half = room // 2
    if a <= half:
        return a, room - a
    if b <= half:
        return room - b, b
    return room - half, half


def _cut_note(count: int) -> bytes:
    return f"\n[... {count} bytes cut to fit max_message_bytes ...]\n".encode()


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "replace")  # as _wire.encode does


def _cut(data: bytes, limit: int) -> str:
    """``data`` (UTF-8) in at most ``limit`` bytes: its head and tail, and
    a note of what was cut between them."""
    if len(data) <= limit:
        return data.decode("utf-8", "ignore")
    keep = limit - len(_cut_note(len(data)))  # no shorter than the note to come
    note = _cut_note(len(data) - keep)
    if keep <= 0:
        return data[: max(limit, 0)].decode("utf-8", "ignore")
    head, tail = data[: keep - keep // 4], data[len(data) - keep // 4 :] if keep // 4 else b""
    return (head + note + tail).decode("utf-8", "ignore")


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except _Interrupted:
        raise
    except BaseException:  # noqa: BLE001 -- a broken __str__ must not lose the error
        return f"<unprintable {type(exc).__name__}>"


def _format_traceback(exc: BaseException) -> str:
    import traceback

    try:
        return "".join(traceback.format_exception(exc))
    except _Interrupted:
        raise
    except BaseException:  # noqa: BLE001 -- e.g. a broken __str__ in the chain
        return f"{_type_name(exc)}: {_safe_str(exc)} (its traceback could not be formatted)\n"


def _next_order(orders: _FrameReader) -> tuple[int, tuple[Any, ...]]:
    try:
        frame = orders.next()
    except Exception:  # noqa: BLE001 -- a garbled or cut channel: the parent is gone
        frame = None
    if frame is None:
        _orphaned()
    return frame


def _orphaned() -> NoReturn:
    """The parent is gone or broke the protocol: nobody supervises us now."""
    if os.getpgrp() == os.getpid():
        os.killpg(0, signal.SIGKILL)  # and every subprocess a job started
    os._exit(70)


def _request_cancel(job_id: int) -> None:
    global _cancel_requested
    _cancel_requested = True
    canceller = _canceller
    if canceller is not None:
        try:
            canceller(job_id)
        except Exception:  # noqa: BLE001 -- the job finished meanwhile
            pass


def _interrupt_main(job_id: int = 0) -> None:
    # A real signal, so a blocking sleep or read in the job is interrupted too.
    signal.pthread_kill(_main_thread, signal.SIGTERM)
