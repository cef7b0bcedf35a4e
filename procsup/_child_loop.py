"""A worker's own event loop: ``worker_loop="asyncio"``, ``"uvloop"`` or ``"trio"``.

Child side, standard library only: :mod:`procsup._child` imports this module
only when INIT asks for a loop, and it imports only that loop's library. One
loop runs from before the initializer to after the last job, in the main
thread:

* the main task runs the initializer, then reads its orders (JOB, STOP)
  from the jobs socket when the loop says it is readable, and runs each job
  to its end before it reads the next: jobs run one at a time, on the loop
  where the initializer's objects and tasks live;
* a CANCEL (passed on by the control thread) cancels the running job's task
  or scope, if that job is still the one the parent meant; the job's answer
  then tells the parent that the worker is still usable. A sync job is
  interrupted by a signal, as on a worker without a loop, and the worker
  exits;
* a background task that raises is logged and retires the worker: it asks
  the parent (RETIRE), which sends STOP; jobs already sent still run;
* STOP or the last of ``max_jobs`` ends the main task; the loop's own
  shutdown (cancel what still runs, finalise async generators, close) runs
  before the process exits.
"""

from __future__ import annotations

import os
from time import monotonic as _monotonic

from . import _child_core, _child_jobs
from ._child_core import _Interrupted
from ._wire import Kind, encode

TYPE_CHECKING = False  # not typing's: see _child
if TYPE_CHECKING:
    import select
    from collections.abc import Awaitable, Callable
    from typing import Any, Protocol

    from ._child_io import _Channel, _FrameReader

    _AsyncFn = Callable[..., Awaitable[Any]]

    class _Loop(Protocol):
        async def wait_for_orders(self) -> None: ...  # until the jobs socket is readable
        async def run_job(self, coro: Any) -> Any: ...
        def cancel_soon(self, job_id: int) -> None: ...  # from another thread
        def after_init(self) -> None: ...


__all__ = ["serve", "worker_nursery"]

# Seconds a run of jobs may go on without a loop turn, when each finds the
# next order already there: what that may delay background tasks by.
_MAX_SKIPPED_TURN = 0.001


def serve(name: str, channel: _Channel, orders: _FrameReader, payload: bytes, max_jobs: int) -> int:
    """A worker's life on a ``name`` loop (one of ``WORKER_LOOPS``, checked
    by the parent); returns its exit code."""
    import select

    try:
        with select.epoll() as arrivals:
            arrivals.register(orders._fd, select.EPOLLIN)
            life = _Life(channel, orders, arrivals, payload, max_jobs)
            if name == "trio":
                return _run_trio(life)
            return _run_asyncio(life, uvloop=name == "uvloop")
    except _StartFailed as failed:
        channel.send(
            encode(Kind.INIT_FAILED, *_child_core._describe(failed.error, room=channel.max_frame))
        )
        return 1


class _StartFailed(Exception):
    """The loop could not start (its library does not import)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Cancelled(Exception):
    """The answer of a job that honoured a cancel request."""


class _Life:
    """The initializer and the jobs, on whichever loop; the loop's parts come
    from ``loop`` (see :class:`_Loop`)."""

    def __init__(
        self,
        channel: _Channel,
        orders: _FrameReader,
        arrivals: select.epoll,
        payload: bytes,
        max_jobs: int,
    ):
        self.channel = channel
        self.orders = orders
        self.arrivals = arrivals  # an epoll set of the jobs socket: readable while it is
        self.turn_due = 0.0  # (monotonic) after it, an order waits for a loop turn
        self.payload = payload
        self.max_jobs = max_jobs
        self.loop: _Loop | None = None
        # Read by the control thread: the job running now (0: none), and
        # whether it is in its sync part (interrupted by a signal, not by the loop).
        self.running = 0
        self.in_sync_call = False
        self.ready = False  # READY sent
        self.stopping = False  # the main task is done: the loop shuts down
        self.retiring = False  # a background task failed (RETIRE sent, or init fails)
        self.init_error: BaseException | None = None

    async def run(self, loop: _Loop) -> int:
        self.loop = loop
        try:
            if not await self._initialize(loop):
                return 1
            _child_core.set_canceller(self.cancel)
            done = 0
            while not self.max_jobs or done < self.max_jobs:
                job = _child_jobs.job_order(*await self._next_order(loop))
                if job is None:
                    return 0  # STOP
                await self._job(loop, *job)
                done += 1
            return 0
        finally:
            _child_core.set_canceller(None)
            self.stopping = True

    async def _initialize(self, loop: _Loop) -> bool:
        try:
            initializer = _child_core._initializer(self.payload)
            state = initializer() if initializer is not None else None
            if _child_core.is_coroutine(state):
                state = await state  # in the main task: its context is the jobs' too
            loop.after_init()
            if self.init_error is not None:
                raise self.init_error
        except _Interrupted:
            raise
        except BaseException as exc:  # noqa: BLE001 -- SystemExit in an initializer is a failure too
            room = self.channel.max_frame
            self.channel.send(encode(Kind.INIT_FAILED, *_child_core._describe(exc, room=room)))
            return False
        _child_core.set_state(state)
        self.ready = True
        self.channel.send(encode(Kind.READY, os.getpid()))
        return True

    async def _next_order(self, loop: _Loop) -> tuple[int, tuple[Any, ...]]:
        # A frame already buffered (STOP behind the last JOB) makes no wakeup,
        # nor does an order already there (the parent often sends the next
        # job before this side gets here), unless the loop is due a turn:
        # background tasks wait for one.
        if not self.orders._buffer and not (self.arrived() and _monotonic() < self.turn_due):
            await loop.wait_for_orders()
            self.turn_due = _monotonic() + _MAX_SKIPPED_TURN
        return _child_core._next_order(self.orders)  # reads only what has arrived

    def arrived(self) -> bool:
        """Whether the jobs socket has bytes to read (without blocking)."""
        return bool(self.arrivals.poll(0))

    async def _job(self, loop: _Loop, job_id: int, payload: bytes | Callable[[], Any]) -> None:
        # As _child_jobs._run_job: what unpickling raises (SystemExit too) is the
        # sender's error; what the job raises is its own, bar an exit.
        channel = self.channel
        try:
            fn, args = _child_core._loads(payload)
        except _Interrupted:
            raise
        except BaseException as exc:  # noqa: BLE001 -- the sender's code; SystemExit too
            channel.send(_child_jobs._error_frame(channel, job_id, exc))
            return
        try:
            self.running = job_id
            try:
                result = await self._call(loop, fn, *args)
            finally:
                self.running = 0
        except (_Interrupted, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 -- the job's error goes to its caller
            channel.send(_child_jobs._error_frame(channel, job_id, exc))
            return
        channel.send(_child_jobs._result_frame(channel, job_id, result))

    async def _call(self, loop: _Loop, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``: its sync part in this thread, then the coroutine it
        returns, if any, on the loop (cancellable)."""
        self.in_sync_call = True
        try:
            result = fn(*args)
        finally:
            self.in_sync_call = False
        if _child_core.is_coroutine(result):
            return await loop.run_job(result)
        return result

    def cancel(self, job_id: int) -> None:
        """Stop job ``job_id`` if it is still running (control thread)."""
        if job_id != self.running or self.loop is None:
            return
        if self.in_sync_call:
            _child_core._interrupt_main()
        else:
            self.loop.cancel_soon(job_id)

    def background_failed(self, what: str, error: BaseException) -> None:
        """A background task raised (loop thread): log it, and retire."""
        import logging

        retire = not (self.retiring or self.stopping)
        logging.getLogger("procsup.worker").error(
            "%s raised %s%s",
            what,
            type(error).__name__,
            "; the worker retires" if retire else "",
            exc_info=error,
        )
        if not retire:
            return
        self.retiring = True
        if self.ready:
            self.channel.send(encode(Kind.RETIRE, f"{what} raised {_child_core._type_name(error)}"))
        else:  # the initializer fails with it
            self.init_error = error


# -- asyncio and uvloop ------------------------------------------------------------


def _run_asyncio(life: _Life, *, uvloop: bool) -> int:
    try:
        import asyncio

        factory = None
        if uvloop:
            import uvloop as uvloop_module

            factory = uvloop_module.new_event_loop
    except ImportError as exc:
        raise _StartFailed(exc) from None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(life.run(_AsyncioLoop(asyncio, runner.get_loop(), life)))


class _AsyncioLoop:
    """The asyncio (or uvloop) parts of a worker's life.

    Background tasks: those the initializer leaves running. One that raises
    goes to the loop's exception handler, as does every unretrieved task
    exception; procsup's handler retires the worker for those. An initializer
    that sets its own handler decides for itself.
    """

    def __init__(self, asyncio: Any, loop: Any, life: _Life) -> None:
        self._asyncio = asyncio
        # The loop watches life.arrivals, not the jobs socket: uvloop makes
        # what it watches non-blocking, and the socket must stay blocking for
        # the threads that write to it and for _FrameReader.
        self._orders_ready = life.arrivals.fileno()
        self._watching = False  # the loop has our reader on _orders_ready
        self._waiter: Any = None  # the main task waits for orders on it
        self._loop = loop
        self._life = life
        self._main: Any = None  # the main task, which runs the jobs
        self._cancelled = False  # the running job's cancel was delivered
        self._background: set[Any] = set()  # held here: the loop holds tasks weakly
        loop.set_exception_handler(self._on_error)

    async def wait_for_orders(self) -> None:
        # The main task sleeps until the reader wakes it. The reader stays
        # registered between jobs (an add_reader and a remove_reader fewer a
        # job); it is removed only when it fires with nobody waiting.
        loop = self._loop
        if not self._watching:
            loop.add_reader(self._orders_ready, self._readable)
            self._watching = True
        self._waiter = waiter = loop.create_future()
        try:
            await waiter  # set once an order is there; only this task reads them
        finally:
            self._waiter = None

    def _readable(self) -> None:
        # The loop may call this for an order the main task has read since
        # (it ran first in the same loop turn): such a call wakes nobody.
        if not self._life.arrived():
            return
        waiter = self._waiter
        if waiter is None:  # an order came while a job awaits: watch again when it is done
            self._loop.remove_reader(self._orders_ready)
            self._watching = False
        elif not waiter.done():
            waiter.set_result(None)

    async def run_job(self, coro: Awaitable[Any]) -> Any:
        # In the main task, not a task of its own: two loop turns fewer a job.
        try:
            return await coro
        finally:
            self._uncancel()

    def cancel_soon(self, job_id: int) -> None:
        self._loop.call_soon_threadsafe(self._cancel, job_id)

    def _cancel(self, job_id: int) -> None:
        # Here, in the loop's thread, "running" means the main task is inside
        # the job's await: the cancellation lands in the job.
        if self._life.running == job_id and not self._cancelled:
            self._cancelled = True
            self._main.cancel()

    def _uncancel(self) -> None:
        """Leave the main task as the job found it, however the job took the cancel."""
        if self._cancelled:
            self._cancelled = False
            self._main.uncancel()

    def after_init(self) -> None:
        self._main = self._asyncio.current_task()
        for task in self._asyncio.all_tasks(self._loop) - {self._main}:
            self._background.add(task)
            task.add_done_callback(self._background_done)

    def _background_done(self, task: Any) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._loop.call_exception_handler(
                {
                    "message": f"background task {task.get_name()!r}",
                    "exception": task.exception(),
                    "task": task,
                }
            )

    def _on_error(self, loop: Any, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if isinstance(error, Exception) and ("task" in context or "future" in context):
            self._life.background_failed(context["message"], error)
        elif not (self._life.stopping and isinstance(error, self._asyncio.CancelledError)):
            # (at shutdown, 3.11's streams call exception() on the tasks it cancels)
            loop.default_exception_handler(context)


# -- trio ----------------------------------------------------------------------------

_nursery: _WorkerNursery | None = None


def worker_nursery() -> _WorkerNursery:
    """The nursery of a ``worker_loop="trio"`` worker, for background tasks.

    Tasks started in it (``start_soon``, ``start``, as on a trio nursery)
    keep running between jobs. One that raises is logged and retires the
    worker (the running job finishes; the pool starts a replacement). At
    shutdown they are cancelled.

    Raises:
        RuntimeError: outside a worker with ``worker_loop="trio"``.
    """
    if _nursery is None:
        raise RuntimeError(
            "procsup.worker_nursery() is only available in a worker with "
            "worker_loop='trio'; on an asyncio worker use asyncio.create_task()"
        )
    return _nursery


class _WorkerNursery:
    """What :func:`worker_nursery` returns: a trio nursery in which a task
    that raises retires the worker instead of cancelling the running job."""

    def __init__(self, nursery: Any, life: _Life) -> None:
        self._nursery = nursery
        self._life = life

    def start_soon(self, fn: _AsyncFn, *args: Any, name: object = None) -> None:
        """Start ``fn(*args)`` in the background."""
        self._nursery.start_soon(self._guard, fn, args, name=name or fn)

    async def start(self, fn: _AsyncFn, *args: Any, name: object = None) -> Any:
        """Start ``fn(*args, task_status=...)`` and wait until it reports started."""
        return await self._nursery.start(self._guard, fn, args, name=name or fn)

    async def _guard(self, fn: Callable[..., Awaitable[Any]], args: Any, **status: Any) -> None:
        try:
            await fn(*args, **status)
        except Exception as exc:  # noqa: BLE001 -- logged, and the worker retires
            name = getattr(fn, "__qualname__", repr(fn))
            self._life.background_failed(f"background task {name!r}", exc)


def _run_trio(life: _Life) -> int:
    global _nursery
    try:
        import trio
    except ImportError as exc:
        raise _StartFailed(exc) from None

    async def main() -> int:
        global _nursery
        async with trio.open_nursery() as nursery:
            _nursery = _WorkerNursery(nursery, life)
            try:
                return await life.run(_TrioLoop(trio, life))
            finally:
                nursery.cancel_scope.cancel()  # the background tasks' shutdown

    try:
        return trio.run(main)
    except BaseExceptionGroup as group:  # the nursery's: what ended the worker
        raise _sole(group) from None
    finally:
        _nursery = None


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


class _TrioLoop:
    """The trio parts of a worker's life."""

    def __init__(self, trio: Any, life: _Life) -> None:
        self._trio = trio
        self._life = life
        self._token = trio.lowlevel.current_trio_token()
        self._scope: Any = None

    async def wait_for_orders(self) -> None:
        await self._trio.lowlevel.wait_readable(self._life.orders._fd)

    async def run_job(self, coro: Awaitable[Any]) -> Any:
        with self._trio.CancelScope() as scope:
            self._scope = scope
            try:
                return await coro
            finally:
                self._scope = None
        raise _Cancelled("the job was cancelled")

    def cancel_soon(self, job_id: int) -> None:
        self._token.run_sync_soon(self._cancel, job_id)

    def _cancel(self, job_id: int) -> None:
        if self._life.running == job_id and self._scope is not None:
            self._scope.cancel()

    def after_init(self) -> None:
        pass
