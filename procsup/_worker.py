"""The parent's side of one supervised worker process.

Ownership: the task that enters :func:`supervise` owns the child. It spawns
it, runs its background tasks (reader, exit watcher, pinger, memory sampler)
in a service nursery, and on the way out -- for any reason -- stops it
gracefully, SIGKILLs its process group when that takes too long, and reaps
it, all in ``finally`` under a shielded scope with deadlines.
"""

from __future__ import annotations

import itertools
import logging
import math
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, NoReturn, TypeVar

import outcome
import trio
from tricycle import open_service_nursery

from . import _shm, _wire
from ._channel import ParentChannel, send_some
from ._child import importing_parent_main
from ._errors import (
    MemoryLimitError,
    ProtocolError,
    RemoteTraceback,
    SerializationError,
    UnsupportedPlatformError,
    WorkerClosedError,
    WorkerCrashedError,
    WorkerError,
    WorkerStartError,
    WorkerUnresponsiveError,
)
from ._logextra import record_extra
from ._options import WorkerOptions, default_start_method
from ._pickle import dump_job, load_result, rebuild_error
from ._spawn import ChildProcess, ExecSpawner, Spawner
from ._startup import startup_fields
from ._util import collapse_single_group
from ._wire import Kind

__all__ = ["Worker", "open_worker", "supervise"]

T = TypeVar("T")
logger = logging.getLogger("procsup")

# How long after the process ended we still read what it wrote before dying.
_DRAIN_GRACE = 1.0
# Bound on waiting for a SIGKILLed process to be reaped (only a process stuck
# in the kernel, state D, takes longer).
_REAP_DEADLINE = 10.0
_MEMORY_WARN_EVERY = 30.0
_job_ids = itertools.count(1)
_JOB_ANSWERS = frozenset({Kind.RESULT, Kind.RESULT_SHM, Kind.ERROR})


class Worker:
    """A supervised worker process, ready for jobs. Made by :func:`open_worker`
    (or a pool); never constructed directly.

    A worker runs one job at a time. After ``max_jobs`` jobs it retires: its
    process exits and :meth:`run` raises :class:`WorkerClosedError`.
    """

    def __init__(
        self,
        options: WorkerOptions,
        process: ChildProcess,
        sock: socket.socket,
        control: socket.socket,
        slot: int = 0,
    ) -> None:
        self._options = options
        self.slot = slot
        """The worker's slot in its pool (see :func:`procsup.worker_slot`)."""
        self._process = process
        self._channel = ParentChannel(sock, control, options.max_message_bytes)
        self._shm = _shm.Transfers(options.shm_min_bytes, options.max_message_bytes)
        self._phase = "init"
        self._jobs_done = 0
        self._retiring = False
        self._failure: WorkerError | None = None
        self._returncode: int | None = None
        self._init_result: outcome.Outcome[None] | None = None
        self._init_settled = trio.Event()
        self._job: _PendingJob | None = None
        self._exited = trio.Event()
        self._reader_done = trio.Event()
        # The exit watcher's wait is also the worker's timer (see _watch_exit):
        # its deadline is the earliest of these.
        self._watch_scope = trio.CancelScope()
        self._init_deadline = math.inf  # initialization must end by then
        self._eof_deadline = math.inf  # the channel closed: the process must end by then
        self._ping_deadline = math.inf  # send a ping, or give up on the last one
        self._ping_stamp: float | None = None
        self._init_timed_out = False
        self._unsent_init = b""  # the part of INIT the socket could not take before spawn
        self.last_ping_rtt: float | None = None
        """Round trip of the last answered ping, in seconds."""
        self.memory_mb: float | None = None
        """The last memory sample, in MiB (PSS, USS or RSS, as ``memory_metric`` says)."""
        self.memory_metric: str | None = None

    # -- public ------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self._process.pid

    @property
    def phase(self) -> str:
        """``"init"``, ``"idle"``, ``"job"``, ``"shutdown"`` or ``"exited"``."""
        return "exited" if self._exited.is_set() else self._phase

    @property
    def jobs_done(self) -> int:
        """Jobs this worker has finished (with a result or an error)."""
        return self._jobs_done

    @property
    def alive(self) -> bool:
        """True until the process has ended."""
        return not self._exited.is_set()

    @property
    def accepting_jobs(self) -> bool:
        """True while :meth:`run` may be called (alive, idle, jobs left)."""
        return self.alive and self._phase == "idle" and not self._retiring

    @property
    def returncode(self) -> int | None:
        """How the process ended, once it has (negative for the signal that killed it)."""
        return self._returncode

    async def wait_exited(self) -> None:
        """Wait until the process has ended and been reaped."""
        await self._exited.wait()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the worker and return its result.

        ``fn`` may be sync or async (async runs under trio in the worker).
        An exception from the job re-raises here as the same type when it is
        an ``Exception`` that pickles (else :class:`RemoteError`), with the
        worker's traceback as ``__cause__``. Cancelling this call stops the job: the worker is
        asked to stop, killed after ``cancel_grace`` seconds, and reaped
        before the cancellation propagates; the worker is then retired.

        Raises:
            SerializationError: ``fn`` or ``args`` do not pickle (nothing was
                sent), or the result did not travel back.
            WorkerClosedError: the worker has retired or is shutting down.
            WorkerCrashedError: the process died during the job.
            WorkerUnresponsiveError, MemoryLimitError, ProtocolError: the
                worker was killed for that reason during the job.
        """
        if not self.accepting_jobs:
            self._refuse_job()
        job = _PendingJob(next(_job_ids))
        frame = self._shm.job_frame(job.id, fn, args) or _wire.encode(
            Kind.JOB, job.id, dump_job(fn, args, self._options.max_message_bytes)
        )
        self._job = job
        self._phase = "job"
        try:
            try:
                self._channel.send_nowait(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self._kill_and_reap()
                job.fail(
                    WorkerCrashedError(
                        "worker died before the job was sent",
                        pid=self.pid,
                        phase="idle",
                        returncode=self._returncode,
                    )
                )
            await job.wait()
        except BaseException:
            if not job.settled:
                with trio.CancelScope(shield=True):
                    await self._abandon_job()
            raise
        finally:
            self._shm.release()
            self._job = None
            self._jobs_done += 1
            self._end_job()
        if job.error is not None:
            raise job.error
        return job.value  # type: ignore[no-any-return]

    def kill(self) -> None:
        """SIGKILL the process and its process group now. The owner reaps it."""
        self._process.kill()

    async def aclose(self) -> None:
        """Stop the worker: ask it to exit, wait up to ``shutdown_timeout``,
        then SIGKILL its process group; return once it is reaped.

        Idempotent, safe to call concurrently, and returns at once for a dead
        worker. A job still running is ended with :class:`WorkerClosedError`.
        """
        try:
            if self._exited.is_set():
                return
            self._retiring = True
            if self._phase == "init":
                return  # a warming worker is killed, not asked (it cannot hear us yet)
            if self._phase != "job":
                self._phase = "shutdown"
            with trio.move_on_after(self._options.shutdown_timeout):
                self._send_quietly(_wire.encode(Kind.STOP))
                await self._exited.wait()
            if not self._exited.is_set():
                self._set_failure(
                    WorkerClosedError,
                    "worker was killed: it did not exit after a stop request",
                    setting=f"shutdown_timeout={self._options.shutdown_timeout:g}s",
                )
        finally:
            await self._kill_and_reap()

    def __repr__(self) -> str:
        return f"<procsup.Worker pid={self.pid} phase={self.phase} jobs_done={self._jobs_done}>"

    # -- lifecycle, used by supervise() -------------------------------------

    async def _initialize(self) -> None:
        """Send what is left of INIT (see :func:`supervise`) and wait for the
        first of: ready, raised, exited, ``init_timeout``. On failure the
        child is killed and reaped and WorkerStartError raised."""
        opts = self._options
        self._init_deadline = trio.current_time() + opts.init_timeout
        self._rearm()
        if self._unsent_init:
            self._send_quietly(self._unsent_init)
        await self._init_settled.wait()  # by an answer, the exit, or the timer's kill
        self._init_deadline = math.inf
        result = self._init_result
        if isinstance(result, outcome.Value):
            self._phase = "idle"
            return
        cause: BaseException | None
        if isinstance(result, outcome.Error):  # the initializer raised
            cause = result.error
            what = str(getattr(cause, "what", cause))
        elif self._init_timed_out:
            cause = None
            what = "initializer did not finish in time"
        else:  # the process ended, or broke the protocol, before answering
            cause = self._failure
            what = cause.what if cause else "worker exited during initialization"
        await self._kill_and_reap()
        setting = self._failure.setting if self._failure else None
        error = WorkerStartError(
            what, pid=self.pid, phase="init", returncode=self._returncode, setting=setting
        )
        if isinstance(cause, WorkerStartError):
            error.remote_type, error.remote_traceback = cause.remote_type, cause.remote_traceback
            raise error from cause.__cause__
        raise error from cause

    async def _watch_exit(self) -> None:
        """Wait for the process to end. The wait is also the worker's timer:
        at its scope's deadline, :meth:`_timer_fired` enforces
        ``init_timeout``, the grace after EOF, and pings."""
        while True:
            with self._watch_scope:
                self._returncode = await self._process.wait()
                break
            self._watch_scope = trio.CancelScope()
            self._timer_fired()
        if not self._reader_done.is_set():  # what it wrote before dying still counts
            with trio.move_on_after(_DRAIN_GRACE):
                await self._reader_done.wait()
        self._settle_on_exit()
        self._exited.set()

    async def _read_forever(self) -> None:
        try:
            await self._channel.receive_forever(self._dispatch)
        except _wire.FrameError as exc:
            self._protocol_violation(str(exc))
        finally:
            self._reader_done.set()
        # EOF. A child that closes its channel yet keeps running is broken.
        self._eof_deadline = trio.current_time() + _DRAIN_GRACE
        self._rearm()

    def _dispatch(self, kind: int, fields: tuple[Any, ...]) -> None:
        if kind in _JOB_ANSWERS:
            job = self._job
            if job is None or job.settled or fields[0] != job.id:
                raise _wire.FrameError(f"{_wire.NAMES[kind]} for a job that is not running")
            self._settle_job(job, kind, fields)
        elif kind == Kind.LOG:
            self._log_record(*fields)
        elif kind == Kind.ALLOC:
            self._alloc_result(*fields)
        elif kind == Kind.PONG:
            if fields[0] != self._ping_stamp:
                raise _wire.FrameError("PONG does not echo the outstanding ping")
            now = trio.current_time()
            self.last_ping_rtt = now - fields[0]
            self._ping_stamp = None
            self._ping_deadline = now + self._options.ping_interval
            self._rearm()
        elif self._retiring:
            pass  # an answer to an initialization we gave up on
        elif self._init_result is not None or self._phase != "init":
            raise _wire.FrameError(f"{_wire.NAMES[kind]} after initialization")
        elif kind == Kind.READY:
            if fields[0] != self.pid:
                raise _wire.FrameError(f"READY from pid {fields[0]}, expected {self.pid}")
            self._init_result = outcome.Value(None)
            self._init_settled.set()
        else:  # INIT_FAILED
            self._init_result = outcome.Error(self._start_error(*fields))
            self._init_settled.set()

    def _start_pings(self) -> None:
        """Pings begin once the worker is first idle."""
        self._ping_deadline = trio.current_time() + self._options.ping_interval
        self._rearm()

    def _rearm(self) -> None:
        self._watch_scope.deadline = min(
            self._init_deadline, self._eof_deadline, self._ping_deadline
        )

    def _timer_fired(self) -> None:
        """Act on whichever deadlines have passed, then re-arm the timer."""
        opts = self._options
        now = trio.current_time()
        if now >= self._init_deadline and not self._init_settled.is_set():
            self._init_deadline = math.inf
            self._init_timed_out = True
            self._set_failure(
                WorkerStartError,
                "initializer did not finish in time",
                setting=f"init_timeout={opts.init_timeout:g}s",
            )
            self.kill()
        if now >= self._eof_deadline:
            self._eof_deadline = math.inf
            self._protocol_violation("worker closed its channel but kept running")
        if now >= self._ping_deadline:
            self._ping_deadline = self._ping_due()
        self._rearm()

    def _ping_due(self) -> float:
        """Send a ping, or give up on the last one; returns the next deadline."""
        opts = self._options
        if self._ping_stamp is not None:  # no PONG within ping_timeout
            self._set_failure(
                WorkerUnresponsiveError,
                "worker did not answer a ping",
                setting=f"ping_timeout={opts.ping_timeout:g}s",
            )
            self.kill()
            return math.inf
        self._ping_stamp = trio.current_time()
        # If this cannot go, the worker's control thread is stuck: no answer
        # comes, and the next deadline gives up on it.
        self._channel.send_control(_wire.encode(Kind.PING, self._ping_stamp))
        return self._ping_stamp + opts.ping_timeout

    async def _sample_memory_forever(self) -> None:
        from ._memory import sample_memory_mb

        opts = self._options
        warned_at = -_MEMORY_WARN_EVERY
        while True:
            sample = await trio.to_thread.run_sync(sample_memory_mb, self.pid)
            if sample is None:
                return  # the process is gone; the exit watcher reports it
            self.memory_mb, self.memory_metric = sample
            mb, metric = sample
            if opts.memory_limit_mb is not None and mb > opts.memory_limit_mb:
                err = self._set_failure(
                    MemoryLimitError,
                    f"worker used {mb:.1f} MiB ({metric}), over the limit",
                    setting=f"memory_limit_mb={opts.memory_limit_mb:g}",
                )
                if isinstance(err, MemoryLimitError):
                    err.measured_mb, err.limit_mb, err.metric = mb, opts.memory_limit_mb, metric
                self.kill()
                return
            now = trio.current_time()
            warn = opts.memory_warn_mb
            if warn is not None and mb > warn and now - warned_at >= _MEMORY_WARN_EVERY:
                warned_at = now
                logger.warning(
                    "worker pid=%d uses %.1f MiB (%s), over memory_warn_mb=%g",
                    self.pid,
                    mb,
                    metric,
                    warn,
                )
            await trio.sleep(opts.memory_interval)

    # -- internals -----------------------------------------------------------

    def _refuse_job(self) -> NoReturn:
        if self._phase == "job":
            raise RuntimeError(f"worker pid={self.pid} is already running a job")
        if not self.alive and self._failure is None and not self._retiring:
            raise WorkerCrashedError(
                "worker died while idle", pid=self.pid, phase="idle", returncode=self._returncode
            )
        raise WorkerClosedError(
            "worker is retired and takes no more jobs",
            pid=self.pid,
            phase=self.phase,
            returncode=self._returncode,
        )

    def _end_job(self) -> None:
        max_jobs = self._options.max_jobs
        if max_jobs is not None and self._jobs_done >= max_jobs:
            self._retiring = True  # the child exits on its own after its last job
        if self._phase == "job":
            self._phase = "shutdown" if self._retiring else "idle"

    async def _abandon_job(self) -> None:
        """The caller gave up on a running job: stop it, bounded, then reap."""
        self._retiring = True
        self._set_failure(WorkerClosedError, "job was cancelled by its caller")
        with trio.move_on_after(self._options.cancel_grace):
            self._channel.send_control(_wire.encode(Kind.CANCEL, self._job.id if self._job else 0))
            await self._exited.wait()
        await self._kill_and_reap()

    async def _kill_and_reap(self) -> None:
        if self._exited.is_set():
            return
        self.kill()
        with trio.CancelScope(shield=True), trio.move_on_after(_REAP_DEADLINE):
            await self._exited.wait()
        if not self._exited.is_set():
            logger.error("worker pid=%d was not reaped %gs after SIGKILL", self.pid, _REAP_DEADLINE)

    def _send_quietly(self, frame: bytes) -> None:
        """Send, ignoring a channel the child already closed (it is dying)."""
        try:
            self._channel.send_nowait(frame)
        except trio.BrokenResourceError:
            pass

    def _set_failure(
        self, cls: type[WorkerError], what: str, *, setting: str | None = None
    ) -> WorkerError:
        """Record why the worker is going away; the first reason wins."""
        if self._failure is None:
            self._failure = cls(what, pid=self.pid, phase=self._phase, setting=setting)
        return self._failure

    def _protocol_violation(self, what: str) -> None:
        if not self._exited.is_set():
            self._set_failure(ProtocolError, f"worker broke the protocol: {what}")
            logger.error("worker pid=%d broke the protocol (%s); killing it", self.pid, what)
            self.kill()

    def _settle_on_exit(self) -> None:
        """The process is reaped: settle whatever still waited on it."""
        failure = self._failure
        if failure is not None:
            failure.returncode = self._returncode
            failure.args = (failure._message(),)
        if not self._init_settled.is_set():
            self._init_settled.set()
        job = self._job
        if job is not None and not job.settled:
            err = failure or WorkerCrashedError(
                "worker died during a job", pid=self.pid, phase="job", returncode=self._returncode
            )
            job.fail(err)

    def _start_error(self, type_name: str, message: str, tb: str, data: bytes) -> WorkerStartError:
        err = WorkerStartError(
            f"initializer raised {type_name}: {message}", pid=self.pid, phase="init"
        )
        err.remote_type = type_name
        err.remote_traceback = tb
        err.__cause__ = RemoteTraceback(tb)
        return err

    def _alloc_result(self, job_id: int, size: int) -> None:
        """The worker asks for shared memory for its job's result (see _shm)."""
        job = self._job
        if job is None or job.settled or job_id != job.id:
            raise _wire.FrameError("ALLOC for a job that is not running")
        try:
            frame = self._shm.alloc(job_id, size)
        except ValueError as exc:
            raise _wire.FrameError(str(exc)) from None
        except OSError as exc:  # no memory, no descriptors: the worker waits for nothing
            job.fail(SerializationError(f"no shared memory for the job's result: {exc}"))
            self._retiring = True
            self.kill()
            return
        self._send_quietly(frame)

    def _settle_job(self, job: _PendingJob, kind: int, fields: tuple[Any, ...]) -> None:
        if kind != Kind.ERROR:
            try:
                if kind == Kind.RESULT:
                    value = load_result(fields[1])
                else:
                    value = load_result(fields[1], self._shm.result_loader(fields[2]))
            except SerializationError as exc:
                job.fail(exc)
            else:
                job.succeed(value)
            return
        job.fail(rebuild_error(*fields[1:]))

    def _log_record(
        self,
        name: str,
        level: int,
        message: str,
        created: float,
        path: str,
        line: int,
        func: str,
        exc_text: str,
        extra: str,
    ) -> None:
        target = logging.getLogger(name)
        if not target.isEnabledFor(level):
            return
        record = target.makeRecord(
            name,
            level,
            path,
            line,
            f"[worker pid={self.pid}] {message}",
            (),
            None,
            func,
            extra=record_extra(extra, worker_pid=self.pid, worker_slot=self.slot),
        )
        record.created = created
        record.process = self.pid
        record.exc_text = exc_text or None
        target.handle(record)


class _PendingJob:
    """A job's result, and the one task waiting for it. Lighter than a
    trio.Event: this is every job's round trip."""

    __slots__ = ("_waiter", "error", "id", "settled", "value")

    def __init__(self, job_id: int) -> None:
        self.id = job_id
        self.settled = False
        self.value: Any = None
        self.error: BaseException | None = None
        self._waiter: trio.lowlevel.Task | None = None

    def succeed(self, value: Any) -> None:
        self.value = value
        self._settle()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._settle()

    def _settle(self) -> None:
        self.settled = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            trio.lowlevel.reschedule(waiter)

    async def wait(self) -> None:
        """Until settled; cancellable (the result may still come later)."""
        if self.settled:
            await trio.lowlevel.checkpoint()
            return
        self._waiter = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self._waiter = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)


def _init_frame(options: WorkerOptions, slot: int, spawner: Spawner) -> bytes:
    return _wire.encode(
        Kind.INIT,
        options.initializer_payload,
        options.max_jobs or 0,
        logging.getLogger().getEffectiveLevel(),
        options.max_message_bytes,
        options.shm_min_bytes or 0,
        *startup_fields(
            name=options.name,
            slot=slot,
            env=options.env,
            capture_output=options.capture_output,
            environ_base=getattr(spawner, "environ_base", None),
        ),
    )


def _check_platform() -> None:
    if sys.platform == "win32":
        raise UnsupportedPlatformError(
            "procsup supervises POSIX processes (process groups, socketpairs, "
            "pidfds); Windows is not supported"
        )


def make_spawner(options: WorkerOptions) -> Spawner:
    """The spawner for ``options.start_method``."""
    _check_platform()
    if importing_parent_main():
        raise RuntimeError(
            "a worker imported your main module to find a job defined in it, and the "
            "module started workers while being imported: start them only under "
            "'if __name__ == \"__main__\":'"
        )
    if options.start_method == "forkserver":
        from ._forkserver import ForkServerSpawner

        return ForkServerSpawner(preload=options.preload)
    return ExecSpawner()


@asynccontextmanager
async def open_spawner(options: WorkerOptions) -> AsyncIterator[Spawner]:
    """The spawner for ``options.start_method``, closed (a fork server's
    template stopped and reaped) when the block exits, however it exits."""
    spawner = make_spawner(options)
    try:
        yield spawner
    finally:
        with trio.CancelScope(shield=True):
            await spawner.aclose()


@asynccontextmanager
async def supervise(
    options: WorkerOptions,
    spawner: Spawner,
    on_spawn: Callable[[int], object] | None = None,
    slot: int = 0,
) -> AsyncIterator[Worker]:
    """Start a worker and own it until the block exits; see :func:`open_worker`.

    ``on_spawn(pid)`` is called once the process exists, before it is warm.
    ``slot`` is the worker's slot in its pool.
    """
    init = _init_frame(options, slot, spawner)
    parent_sock, child_sock = socket.socketpair()
    parent_control, child_control = socket.socketpair()
    # INIT goes in before the process exists, so that it reads it as soon as
    # it runs: off the path to warm are our handling of the spawn and a
    # round trip through the event loop.
    parent_sock.setblocking(False)
    unsent_init = init[send_some(parent_sock, init) :]
    try:
        process = await spawner.spawn(child_sock.fileno(), child_control.fileno())
    except BaseException as exc:
        parent_sock.close()
        parent_control.close()
        if isinstance(exc, OSError):
            raise WorkerStartError(
                f"could not start a worker process: {exc}", pid=None, phase="init"
            ) from exc
        raise
    finally:
        child_sock.close()
        child_control.close()
    worker = Worker(options, process, parent_sock, parent_control, slot)
    worker._unsent_init = unsent_init
    if on_spawn is not None:
        on_spawn(process.pid)
    try:
        with collapse_single_group():
            async with _worker_tasks(worker, options):
                yield worker
    finally:
        worker._channel.close()


@asynccontextmanager
async def _worker_tasks(worker: Worker, options: WorkerOptions) -> AsyncIterator[None]:
    """Run the worker's background tasks around initialization and the body.

    A service nursery: the body is cancelled first, so its shielded
    ``aclose`` still has the reader and the exit watcher working for it.
    """
    async with open_service_nursery() as nursery:
        worker._channel.bind(nursery)
        nursery.start_soon(worker._watch_exit)
        nursery.start_soon(worker._read_forever)
        if options.memory_limit_mb is not None or options.memory_warn_mb is not None:
            # From spawn: an initializer over the limit is a start failure (with
            # backoff), not a warm worker killed at once and respawned forever.
            nursery.start_soon(worker._sample_memory_forever)
        try:
            await worker._initialize()
            worker._start_pings()
            yield
        finally:
            with trio.CancelScope(shield=True):
                await worker.aclose()
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_worker(
    initializer: Callable[[], Any] | str | None = None,
    *,
    init_timeout: float = 10.0,
    max_jobs: int | None = 1,
    shutdown_timeout: float = 5.0,
    ping_interval: float = 5.0,
    ping_timeout: float = 10.0,
    memory_warn_mb: float | None = None,
    memory_limit_mb: float | None = None,
    **options: Any,
) -> AsyncIterator[Worker]:
    """Start one supervised worker process and yield it once it is warm.

    Args:
        initializer: run once in the worker before any job: a picklable
            callable (sync or async) or a ``"module:function"`` string. Its
            return value is :func:`procsup.worker_state` inside the worker.
        init_timeout: seconds the initializer may take (from spawn).
        max_jobs: jobs before the worker retires; ``None`` for no limit.
        shutdown_timeout: seconds a stop request may take before SIGKILL.
        ping_interval: seconds between health pings.
        ping_timeout: seconds a ping may go unanswered before the worker is
            killed with :class:`WorkerUnresponsiveError`.
        memory_warn_mb: log a (rate-limited) warning above this many MiB.
        memory_limit_mb: kill the worker with :class:`MemoryLimitError`
            above this many MiB.
        **options: ``memory_interval`` (0.5 s between memory samples),
            ``cancel_grace`` (1.0 s a cancelled job gets to stop before
            SIGKILL), ``max_message_bytes`` (256 MiB frame limit),
            ``start_method`` (``"exec"``, the default here, or
            ``"forkserver"``; ``$PROCSUP_START_METHOD`` overrides the
            default), ``preload`` (modules a fork server imports once).

    Raises:
        WorkerStartError: the initializer raised, the worker exited, or
            ``init_timeout`` elapsed; the child is already killed and reaped.

    Leaving the block stops the worker gracefully, then by SIGKILL of its
    process group after ``shutdown_timeout``, and always reaps it.
    """
    options.setdefault("start_method", default_start_method(pool=False))
    opts = WorkerOptions(
        initializer=initializer,
        init_timeout=init_timeout,
        max_jobs=max_jobs,
        shutdown_timeout=shutdown_timeout,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        memory_warn_mb=memory_warn_mb,
        memory_limit_mb=memory_limit_mb,
        **options,
    )
    async with open_spawner(opts) as spawner, supervise(opts, spawner) as worker:
        yield worker
