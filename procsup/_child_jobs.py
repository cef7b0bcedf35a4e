"""A worker's jobs: taking a JOB or JOB_SHM order, running it, and the
frame that answers it (RESULT, RESULT_SHM or ERROR). Shared by
:mod:`procsup._child` (a worker without a loop) and :mod:`procsup._child_loop`
(a worker with one).

Child side: imports what :mod:`procsup._child` does, nothing more; the
shared-memory path (:mod:`procsup._shm`, which imports pickle) when a large
buffer first comes its way, and ``pickle``, ``mmap`` when first needed.
Not imported by :mod:`procsup._shm` (which imports :mod:`procsup._child_core`).
"""

from __future__ import annotations

import _thread
import os

from . import _child_core
from ._child_core import (
    _begin_job,
    _call,
    _describe,
    _Interrupted,
    _loads,
    _next_order,
    _safe_str,
    _type_name,
    has_large_buffer,
)
from ._wire import Kind, encode, max_payload

TYPE_CHECKING = False  # not typing's: see _child
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ._child_io import _Channel, _FrameReader

__all__ = ["job_order", "trim"]

# Set by procsup._child.run and _serve from the worker's start and its INIT.
_shm_min_bytes = 0  # from INIT: a result's buffers this large go through shared memory (0: never)
_start_mark: Any = None  # the shared word the parent reads: the last job taken (procsup._startmark)
_orders: _FrameReader | None = None  # the jobs socket's frames, read by the main thread


def set_orders(orders: _FrameReader) -> None:
    """The jobs socket's reader: set once, when the worker starts."""
    global _orders
    _orders = orders


def set_shm_min_bytes(shm_min_bytes: int) -> None:
    """INIT's ``shm_min_bytes``: set once, from INIT."""
    global _shm_min_bytes
    _shm_min_bytes = shm_min_bytes


# A batch's jobs: the last one begun, and the ids (first, last) that the
# control thread gave back on a TRIM (never begun); the lock makes "begin
# the next one" and "give back the rest" exclusive.
_batch_lock = _thread.allocate_lock()
_batch_begun = 0
_given_back = (0, -1)


def job_order(kind: int, fields: tuple[Any, ...]) -> tuple[int, Any] | None:
    """A JOB or JOB_SHM order as (job id, payload or its loader); None for
    STOP. The job is ours from here on: its id goes into the start mark, and
    the parent may no longer run it elsewhere."""
    if kind not in (Kind.JOB, Kind.JOB_SHM):
        return None
    if _start_mark is not None:
        _start_mark[0] = fields[0]
    if kind == Kind.JOB_SHM:  # large buffers in shared memory
        from . import _shm

        return fields[0], _shm.job_loader(*fields[1:])
    return fields[0], fields[1]


def _map_start_mark(fd: int) -> None:
    global _start_mark
    import mmap

    _start_mark = memoryview(mmap.mmap(fd, 8)).cast("q")
    os.close(fd)


def _run_batch(channel: _Channel, first_id: int, count: int, payload: bytes) -> int:
    """A BATCH order: ``count`` jobs of one function, run one after another,
    each answered as soon as it ends (the parent reads each result as it
    comes; after a crash the start mark names the one that ran). After a
    cancel request nothing more of it begins. Returns how many it began."""
    failure: BaseException | None = None
    try:
        fn, items = _loads(payload)
    except _Interrupted:
        raise
    except BaseException as exc:  # noqa: BLE001 -- the sender's code: every job's error
        failure = exc
    global _batch_begun
    begun = 0
    for index in range(count):
        if _child_core._cancel_requested:
            raise _Interrupted
        job_id = first_id + index
        with _batch_lock:
            low, high = _given_back
            if low <= job_id <= high:
                continue  # the parent took it back (TRIM)
            _batch_begun = job_id
            if _start_mark is not None:
                _start_mark[0] = job_id
        begun += 1
        if failure is not None:
            channel.send(_error_frame(channel, job_id, failure))
            continue
        _begin_job()
        _run_job(channel, job_id, items[index], fn)
    return begun


def trim(channel: _Channel, running: int, last: int) -> None:
    """A TRIM order (the control thread's): give back the batch jobs after
    ``running`` up to ``last`` that the main thread has not begun."""
    global _given_back
    with _batch_lock:
        first = max(running, _batch_begun) + 1
        if first > last:
            return  # all begun: nothing to give back, and the parent hears of each
        _given_back = (first, last)
    channel.send(encode(Kind.TRIMMED, first))


def _run_job(
    channel: _Channel, job_id: int, payload: bytes, fn: Callable[..., Any] | None = None
) -> None:
    """Run one job: ``payload`` is its pickled ``(fn, args)``, or, with
    ``fn`` given (a batch's), its one argument."""
    try:
        try:
            if fn is None:
                fn, args = _loads(payload)
            else:
                args = (_loads(payload),)
        except _Interrupted:
            raise
        except BaseException as exc:  # noqa: BLE001 -- the sender's code; SystemExit too
            _child_core.set_canceller(None)
            channel.send(_error_frame(channel, job_id, exc))
            return
        try:
            result = _call(fn, *args)
        finally:
            _child_core.set_canceller(None)
    except (_Interrupted, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 -- the job's error goes to its caller
        channel.send(_error_frame(channel, job_id, exc))
        return
    channel.send(_result_frame(channel, job_id, result))


def _result_frame(channel: _Channel, job_id: int, result: object) -> bytes:
    import pickle

    if _shm_min_bytes and has_large_buffer(result, _shm_min_bytes, depth=1):
        from . import _shm

        frame = _shm.result_frame(
            channel.send, _next_main_order, job_id, result, _shm_min_bytes, channel.max_frame
        )
        if frame is not None:
            return frame
    try:
        data = pickle.dumps(result, pickle.HIGHEST_PROTOCOL)
    except _Interrupted:
        raise
    except BaseException as exc:  # noqa: BLE001 -- the result's own code; SystemExit too
        problem = f"could not be pickled: {_safe_str(exc)}"
    else:
        if len(data) <= max_payload(channel.max_frame):
            return encode(Kind.RESULT, job_id, data)
        problem = (
            f"pickles to {len(data)} bytes, over max_message_bytes={channel.max_frame} "
            "(less the frame's own bytes)"
        )
    from ._errors import SerializationError  # only now: it imports signal, and so enum

    err = SerializationError(f"the job's result of type {_type_name(result)} {problem}")
    return _error_frame(channel, job_id, err, with_traceback=False)


def _error_frame(
    channel: _Channel, job_id: int, exc: BaseException, *, with_traceback: bool = True
) -> bytes:
    room = channel.max_frame - 8  # the job id's field
    return encode(Kind.ERROR, job_id, *_describe(exc, room=room, with_traceback=with_traceback))


def _next_main_order() -> tuple[int, tuple[Any, ...]]:
    assert _orders is not None
    return _next_order(_orders)
