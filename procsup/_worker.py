"""The parent's side of one supervised worker process.

Ownership: the task that enters :func:`supervise` owns the child. It spawns
it and runs the worker's background tasks in a service nursery (the reader;
the exit watcher, whose wait is also the worker's timer; the memory sampler
when a memory option is set). On the way out -- for any reason -- it stops
the child gracefully, SIGKILLs its process group when that takes too long,
and reaps it, all in ``finally`` under a shielded scope with deadlines.

A worker's life, as :attr:`Worker.phase` tells it (``_NEXT_PHASES`` is the
same, in code)::

    init --READY--> idle --run()--> job --answer--> idle
                      |               |
                      +--aclose()-----+--its last job, aclose(), cancelled--> shutdown

The process may die in any phase; the phase it died in stays in ``_phase``
and :attr:`Worker.phase` says ``"exited"``. A start that fails is killed in
``init``.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import trio
from tricycle import open_service_nursery

from . import _shm, _wire
from ._channel import ParentChannel
from ._errors import (
    JobTimeoutError,
    MemoryLimitError,
    ProtocolError,
    RemoteTraceback,
    SerializationError,
    WorkerClosedError,
    WorkerCrashedError,
    WorkerError,
    WorkerStartError,
    WorkerUnresponsiveError,
    describe_exit,
)
from ._job import _Job
from ._learn import LearnedModules
from ._limits import start_failure
from ._logextra import record_extra
from ._options import WorkerOptions, check_timeout
from ._pickle import dump_job, load_result, rebuild_error
from ._pings import IdlePings
from ._process import ChildProcess
from ._spawn import Spawner, open_spawner
from ._startmark import StartMark
from ._startup import EnvOption, startup_fields
from ._util import NoPublicConstructor, collapse_single_group
from ._wire import Kind

if TYPE_CHECKING:
    from ._batch import Batch

__all__ = ["Worker", "WorkerEvents", "open_worker", "supervise"]

T = TypeVar("T")
# Loggers: "procsup" for what concerns one worker process (its supervision, the
# fork server, a worker's own notices); "procsup.pool" for a pool's events.
logger = logging.getLogger("procsup")

# How long after the process ended we still read what it wrote before dying.
_DRAIN_GRACE = 1.0
# Bound on waiting for a SIGKILLed process to be reaped (only a process stuck
# in the kernel, state D, takes longer).
_REAP_DEADLINE = 10.0
_MEMORY_WARN_EVERY = 30.0
_job_ids = itertools.count(1)
_JOB_ANSWERS = frozenset({Kind.RESULT, Kind.RESULT_SHM, Kind.ERROR})

# What may follow each phase. "exited" is not entered: it is the reaped
# process, whatever the phase was.
_NEXT_PHASES: Mapping[str, frozenset[str]] = {
    "init": frozenset({"idle"}),  # READY (a failed start is killed in "init")
    "idle": frozenset({"job", "shutdown"}),  # run(); aclose()
    "job": frozenset({"idle", "shutdown"}),  # the answer; retiring (last job, aclose, cancel)
    "shutdown": frozenset(),  # the process exits, or is killed
}

WorkerEvents = Callable[[str, int, BaseException | None], object]
"""The owner's hook on a worker's life: ``(kind, pid, error)`` for ``"start"``
(the process exists), ``"job_started"`` and ``"job_finished"`` (``error``:
what the job's caller got, if not a result), ``"job_completed"`` (the job
returned or raised: the worker answered), ``"recycled"`` (over
``recycle_above_mb`` after a job: it retires), and ``"died_unused"`` (the warm
worker ended before it began any job, by no decision of ours: a failed
start, ``error`` saying why).

Every ``"job_started"`` is followed by exactly one ``"job_finished"``. A
job is announced when it is sent (a batch's next job: when the one before
it answers, since the parent does not hear when a job begins); one the
worker then never began -- it died first, or a TRIM took it back
(:mod:`procsup._batch`) -- still gets its ``"job_finished"``, its error a
:class:`WorkerError` of phase ``"idle"`` that says so (a pool runs it on
another worker, with events of its own)."""


class Worker(metaclass=NoPublicConstructor):
    """A supervised worker process, ready for jobs. Made by :func:`open_worker`
    (or a pool); it has no public constructor.

    A worker runs one job at a time. After ``max_jobs`` jobs it retires: its
    process exits and :meth:`run` raises :class:`WorkerClosedError`.
    """

    def __init__(
        self,
        options: WorkerOptions,
        process: ChildProcess,
        channel: ParentChannel,
        mark: StartMark,
        events: WorkerEvents | None,
        slot: int,
        learned: LearnedModules | None = None,
    ) -> None:
        self._options = options
        self._mark = mark  # read only once the process has ended
        self._learned = learned  # the pool's job modules, noted per job (procsup._learn)
        self.slot = slot
        """The worker's slot in its pool (see :func:`procsup.worker_slot`)."""
        self._process = process
        self._channel = channel
        self._shm = _shm.Transfers(options.shm_min_bytes, options.max_message_bytes)
        self._events = events  # the owner's hook; None: nobody listens
        # -- the phase (_NEXT_PHASES): changed by _enter() only
        self._phase = "init"  # never "exited" (that is _exited); kept after the exit
        self._retiring = False  # no more jobs: "shutdown" follows this phase (in "init": the kill)
        self._job: _Job | None = None  # the job sent and not yet over: only in "job"
        self._job_ended: trio.Event | None = None  # set while _job runs on without its
        # caller (kill_on_cancel=False); set and cleared when it ends
        self._unstarted = False  # the process ended with a job sent that it never began
        self._jobs_done = 0  # jobs it began that ended, however
        # -- initialization: READY or INIT_FAILED, the exit, or the timer's kill sets it
        self._init_settled = trio.Event()
        self._ready = False  # READY came (then _init_settled is set)
        # -- the end
        self._reason: _Reason | None = None  # why we end the worker; the first wins; None:
        # nobody decided to (it retired, or died on its own)
        self._error: WorkerError | None = None  # the waiter's error, built once (_caller_error)
        self._returncode: int | None = None  # set when reaped, just before _exited
        self._exited = trio.Event()  # reaped, and every waiter on it settled
        self._stop_by = math.inf  # set once: when a stop (aclose) gives up and kills it
        self._reader_done = trio.Event()  # the reader has seen EOF, or gave up on garbage
        # -- the timer: the exit watcher's wait; see _Timer for the deadlines
        self._timer = _Timer()
        self._ping_stamp: float | None = None  # the ping not yet answered; None: none out
        # A pool's workers: idle ones are pinged at the pool's rate (_pings);
        # _ping_late: the next ping is armed past ping_interval from its answer.
        self._idle_pings: IdlePings | None = None
        self._ping_late = False
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
    def exiting(self) -> bool:
        """Past its last answer and exiting on its own (``max_jobs`` reached,
        recycled, retired by a stop request): none of the owner's code runs
        in it again, and nobody decided to kill it."""
        return (
            self.alive and self._phase == "shutdown" and self._job is None and self._reason is None
        )

    @property
    def returncode(self) -> int | None:
        """How the process ended, once it has (negative for the signal that killed it)."""
        return self._returncode

    async def wait_exited(self) -> None:
        """Wait until the process has ended and been reaped."""
        await self._exited.wait()

    async def run(
        self,
        fn: Callable[..., T],
        *args: Any,
        timeout: float | None = None,  # noqa: ASYNC109 -- counted from when the job is sent
        kill_on_cancel: bool = True,
    ) -> T:
        """Run ``fn(*args)`` in the worker and return its result.

        ``fn`` may be sync or async: async runs under trio in the worker,
        or on the worker's own loop when ``worker_loop`` is set.
        An exception from the job re-raises here as the same type when it is
        an ``Exception`` that pickles (else :class:`RemoteError`), with the
        worker's traceback as ``__cause__``.

        ``timeout`` (seconds; ``None``: none) counts from when the job is
        sent. Past it the job is stopped (a cancel request, then SIGKILL
        after ``cancel_grace``), the worker reaped, and
        :class:`JobTimeoutError` raised.

        Cancelling this call: with ``kill_on_cancel=True`` (the default) the
        job is stopped the same way and the worker reaped before the
        cancellation propagates; the worker is then retired -- except on a
        ``worker_loop`` worker whose job answers the cancel within
        ``cancel_grace``, which stays warm. With ``kill_on_cancel=False`` the
        cancellation propagates at once and the job runs on to its end (or
        its ``timeout``), its result dropped; the worker then takes jobs
        again if it has jobs left (a :meth:`run` meanwhile waits for that).
        A call in an already-cancelled scope sends nothing: it is a
        checkpoint.

        Raises:
            SerializationError: ``fn`` or ``args`` do not pickle (nothing was
                sent), or the result did not travel back.
            JobTimeoutError: ``timeout`` elapsed.
            WorkerClosedError: the worker has retired or is shutting down.
            WorkerCrashedError: the process died during the job (``phase``
                ``"job"``), or before it began the job (``"idle"``: the job
                never ran; its start mark says so, see procsup._startmark).
            WorkerUnresponsiveError, MemoryLimitError, ProtocolError: the
                worker was killed for that reason, during the job
                (``"job"``) or before it began it (``"idle"``).
        """
        job = await self._run(fn, args, timeout, kill_on_cancel)
        if job is None:
            self._refuse_job()
        return job.unwrap()  # type: ignore[no-any-return]

    def _stop_now(self, why: str) -> None:
        """End the worker at once (SIGKILL of its group); a running job's
        caller gets :class:`WorkerClosedError` saying ``why``. The owner reaps it."""
        self._retiring = True
        self._end_for(WorkerClosedError, f"worker was stopped: {why}")
        self.kill()

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
            if self._phase == "idle":
                self._enter("shutdown")
            with trio.move_on_at(self._stop_deadline()):
                self._send_quietly(_wire.encode(Kind.STOP))
                await self._exited.wait()
            if not self._exited.is_set():
                self._end_for(
                    WorkerClosedError,
                    "worker was killed: it did not exit after a stop request",
                    setting=f"shutdown_timeout={self._options.shutdown_timeout:g}s",
                )
        finally:
            await self._kill_and_reap()

    def _stop_deadline(self) -> float:
        """When the stop of this worker gives up on a graceful exit:
        ``shutdown_timeout`` from the first time anyone asks (an owner that
        waits for an exiting worker, then aclose(), share one deadline)."""
        if self._stop_by == math.inf:
            self._stop_by = trio.current_time() + self._options.shutdown_timeout
        return self._stop_by

    def __repr__(self) -> str:
        return f"<procsup.Worker pid={self.pid} phase={self.phase} jobs_done={self._jobs_done}>"

    # -- one job -------------------------------------------------------------

    async def _run(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        timeout: float | None = None,  # noqa: ASYNC109 -- counted from when the job is sent
        kill_on_cancel: bool = True,
    ) -> _Job | None:
        """Run one job; return it settled, with its value or its error.

        Returns ``None`` when the worker died idle, before the job was sent:
        nothing ran, and the caller may submit the job again to another
        worker (:meth:`run` raises :class:`WorkerCrashedError` instead). It
        is the only "try elsewhere" signal. Raises what :meth:`run` raises
        before anything is sent, and cancellation (see :meth:`run` for
        ``timeout`` and ``kill_on_cancel``).
        """
        check_timeout(timeout)
        await trio.lowlevel.checkpoint_if_cancelled()  # a cancelled call sends nothing
        events = self._events
        if events is None:
            return await self._send_and_wait(fn, args, timeout, kill_on_cancel)
        pid = self.pid
        events("job_started", pid, None)
        try:
            job = await self._send_and_wait(fn, args, timeout, kill_on_cancel)
        except BaseException as exc:
            if not self._job_runs_on:  # else "job_finished" comes when it ends
                events("job_finished", pid, exc)
            raise
        events("job_finished", pid, self._refusal() if job is None else job.error)
        if job is not None and job.answered:
            events("job_completed", pid, None)
        return job

    async def _send_and_wait(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        timeout: float | None,  # noqa: ASYNC109 -- see _run
        kill_on_cancel: bool,
    ) -> _Job | None:
        if self._job_ended is not None:  # a job its caller left runs on: wait for its end
            await self._job_ended.wait()
        if not self._can_take_job():
            return None
        job = _Job(next(_job_ids))
        frame = self._shm.job_frame(job.id, fn, args)
        payload = None
        if frame is None:
            payload = dump_job(fn, args, self._options.max_message_bytes)
            frame = _wire.encode(Kind.JOB, job.id, payload)
        if self._learned is not None:
            self._learned.note(fn, payload)
        return await self._send_job(job, frame, timeout, kill_on_cancel)

    def _can_take_job(self) -> bool:
        """False: the worker died idle (the job may go elsewhere); raises
        the refusal when it takes no jobs for another reason."""
        if not self.accepting_jobs:
            if self._died_idle():
                return False
            self._refuse_job()
        return True

    async def _send_job(
        self,
        job: _Job,
        frame: bytes,
        timeout: float | None,  # noqa: ASYNC109 -- see _run
        kill_on_cancel: bool,
    ) -> _Job | None:
        try:
            self._channel.send_nowait(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._shm.release()
            await self._kill_and_reap()  # it is dying: have it reaped, still "idle"
            return None
        self._job = job
        self._enter("job")
        if timeout is not None:
            job.timeout = timeout
            self._timer.arm("job", trio.current_time() + timeout)
        if self._ping_late and self._ping_stamp is None:  # busy: pinged at ping_interval
            self._ping_late = False
            self._timer.arm("ping", trio.current_time() + self._options.ping_interval)
        self._receive_now()  # a short job's answer may be here already
        try:
            await job.wait()
        except BaseException:
            if not job.settled:
                if not kill_on_cancel:
                    self._leave_running(job)
                    raise
                with trio.CancelScope(shield=True):
                    await self._abandon_job(job)
            self._job_over(job)
            raise
        if self._options.recycle_above_mb is not None:
            await self._recycle_if_over(self._options.recycle_above_mb)
        self._job_over(job)
        return None if self._unstarted else job

    async def _run_batch(self, batch: Batch, timeout: float | None) -> bool:  # noqa: ASYNC109
        """Run a :class:`procsup._batch.Batch` (jobs of one function in one
        BATCH order; each reports its own end). False: the worker died idle
        before it was sent (nothing ran). Each job gets ``timeout`` and the
        events of a job; cancellation as for :meth:`run`."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._can_take_job():
            return False
        frame = batch.start(_take_ids(batch.count), self._batch_job_over)
        events = self._events
        if events is not None:
            events("job_started", self.pid, None)
        if batch.trim_after is not None:
            batch.job_began = trio.current_time()
            self._timer.arm("trim", batch.job_began + batch.trim_after)
        try:
            await self._send_job(batch, frame, timeout, True)
        except BaseException as exc:
            if events is not None:
                events("job_finished", self.pid, exc)
            raise
        return True

    def _extend_batch(self, batch: Batch, count: int, payload: bytes) -> bool:
        """Queue ``count`` more jobs on the running ``batch`` (one more BATCH
        order, begun after the ones before it). False: not sent (the batch
        is over, or the worker takes no more)."""
        if self._job is not batch or batch.settled or batch.expired or self._retiring:
            return False
        if batch.trim_sent:  # its worker was asked for the rest back: nothing more behind it
            return False
        frame = batch.extend(_take_ids(count), count, payload)
        # Sent, or the worker is dying: then they never begin, and the exit says so.
        self._send_quietly(frame)
        return True

    def _trim_due(self) -> None:
        """The running batch's job has run ``trim_after``: ask the worker
        for the jobs it has not begun (TRIM), to run elsewhere."""
        batch = self._job
        if batch is None or batch.settled or batch.expired:
            return
        due = batch.trim_at()
        if due is None:
            return
        if due > trio.current_time():
            self._timer.arm("trim", due)  # a later job: its own time
            return
        self._channel.send_control(batch.trim_order())

    def _batch_job_over(self, job: _Job, error: BaseException | None, next_begins: bool) -> None:
        """A job of the running batch ended: its events, and the next one's timeout."""
        events = self._events
        if events is not None:
            pid = self._process.pid
            events("job_finished", pid, error)
            if job.answered:
                events("job_completed", pid, None)
            if next_begins:
                events("job_started", pid, None)
        if next_begins:
            self._shm.release()  # the result's segment, if it had one
            if job.timeout != math.inf:
                self._timer.arm("job", trio.current_time() + job.timeout)

    async def _recycle_if_over(self, limit_mb: float) -> None:
        """After a job, before its result is returned: retire the worker
        gracefully (a stop request) when it uses more than ``limit_mb``, by a
        fresh sample of the memory options' measure."""
        if self._retiring or not self.alive:
            return
        from ._memory import sample_memory_mb

        with trio.CancelScope(shield=True):  # one short read of /proc; the result is in hand
            sample = await trio.to_thread.run_sync(sample_memory_mb, self.pid)
        if sample is None:
            return  # gone: the exit watcher reports it
        self.memory_mb, self.memory_metric = sample
        if sample[0] <= limit_mb:
            return
        logger.info(
            "worker pid=%d uses %.1f MiB (%s) after its job, over recycle_above_mb=%g: retiring it",
            self.pid,
            *sample,
            limit_mb,
        )
        self._retiring = True
        self._send_quietly(_wire.encode(Kind.STOP))  # read once the job's answer is out
        if self._events is not None:
            self._events("recycled", self.pid, None)

    def _job_over(self, job: _Job) -> None:
        """The job ended (answered, or its process died), whoever waited for it."""
        self._timer.disarm("job")
        self._timer.disarm("trim")
        self._shm.release()
        self._job = None
        self._jobs_done += job.jobs_begun(self._unstarted)
        self._end_job()
        if job.orphaned:
            ended, self._job_ended = self._job_ended, None
            if ended is not None:
                ended.set()
            if self._events is not None:
                self._events("job_finished", self.pid, job.error)

    def _leave_running(self, job: _Job) -> None:
        """Its caller left (kill_on_cancel=False): the job runs on, its
        result is dropped, and its end (:meth:`_job_over`) frees the worker."""
        job.orphaned = True
        self._job_ended = trio.Event()

    @property
    def _job_runs_on(self) -> bool:
        """A job whose caller left runs (kill_on_cancel=False)."""
        return self._job_ended is not None

    def _job_timed_out(self) -> None:
        job = self._job
        if job is None or job.settled:
            return
        job.expired = True  # its answer, if one still comes, no longer counts
        self._retiring = True
        self._end_for(
            JobTimeoutError,
            "job did not finish within its timeout",
            setting=f"timeout={job.timeout:g}s",
            details={"timeout": job.timeout},
        )
        self._channel.send_control(_wire.encode(Kind.CANCEL, job.id))
        self._timer.arm("cancel", trio.current_time() + self._options.cancel_grace)

    def _died_idle(self) -> bool:
        """The process ended on its own while idle (no reason of ours)."""
        return not self.alive and self._reason is None and not self._retiring

    def _refusal(self) -> WorkerError | RuntimeError:
        """Why :meth:`run` cannot take a job now."""
        if self._unstarted:
            return self._unstarted_error()
        if self._phase == "job":
            return RuntimeError(f"worker pid={self.pid} is already running a job")
        if self._died_idle():
            return WorkerCrashedError(
                "worker died while idle; the job was not sent",
                pid=self.pid,
                phase="idle",
                returncode=self._returncode,
            )
        return WorkerClosedError(
            "worker is retired and takes no more jobs",
            pid=self.pid,
            phase=self.phase,
            returncode=self._returncode,
        )

    def _refuse_job(self) -> NoReturn:
        raise self._refusal()

    def _unstarted_error(self) -> WorkerError:
        """The error of a job sent that the worker never began: phase "idle"."""
        reason, rc = self._reason, self._returncode
        if reason is None:
            return WorkerCrashedError(
                "worker died before it began the job (the job never ran)",
                pid=self.pid,
                phase="idle",
                returncode=rc,
            )
        return reason.build(self.pid, rc, phase="idle")

    def _given_back_error(self) -> WorkerError:
        """The ``job_finished`` error of a batch job taken back (TRIM) as it
        would begin: it never ran here, and runs on another worker."""
        return WorkerClosedError(
            "job was given back before it began (its batch was trimmed); it runs on another worker",
            pid=self.pid,
            phase="idle",
        )

    def _end_job(self) -> None:
        max_jobs = self._options.max_jobs
        if max_jobs is not None and self._jobs_done >= max_jobs:
            self._retiring = True  # the child exits on its own after its last job
        if self._phase == "job":
            self._enter("shutdown" if self._retiring else "idle")

    async def _abandon_job(self, job: _Job) -> None:
        """The caller gave up on a running job: stop it, bounded, then reap.
        A worker with its own event loop stays when the job answers within
        ``cancel_grace`` (it honoured the cancel): its loop's state is intact."""
        reusable = self._options.worker_loop is not None
        if not reusable:
            self._retire_cancelled()
        with trio.move_on_after(self._options.cancel_grace):
            self._channel.send_control(_wire.encode(Kind.CANCEL, job.id))
            if reusable:
                await job.wait()  # an answer, or the exit
                if self.alive:
                    return
            await self._exited.wait()
        self._retire_cancelled()
        await self._kill_and_reap()

    def _retire_cancelled(self) -> None:
        self._retiring = True
        self._end_for(WorkerClosedError, "job was cancelled by its caller")

    # -- the phase and the end -------------------------------------------------

    def _enter(self, phase: str) -> None:
        assert phase in _NEXT_PHASES[self._phase], f"{self._phase} -> {phase}"
        self._phase = phase

    def _end_for(
        self,
        cls: type[WorkerError],
        what: str,
        *,
        setting: str | None = None,
        details: Mapping[str, object] | None = None,
        cause: BaseException | None = None,
    ) -> None:
        """Record why the worker is going away (the first reason wins). The
        caller kills it, or is already waiting for it to exit."""
        if self._reason is None:
            self._reason = _Reason(cls, what, self._phase, setting, details or {}, cause)

    def _caller_error(self) -> WorkerError:
        """The error of whoever waits on this worker's current phase (the
        job's caller, or the start): built once, from the recorded reason,
        or from the phase the process died in when there is none."""
        if self._error is None:
            reason, rc = self._reason, self._returncode
            if self._phase == "init":
                self._error = _start_error(reason, self.pid, rc)
            elif reason is None:
                self._error = WorkerCrashedError(
                    "worker died during a job", pid=self.pid, phase="job", returncode=rc
                )
            else:
                self._error = reason.build(self.pid, rc)
        return self._error

    def _settle_on_exit(self) -> None:
        """The process is reaped: settle whatever still waited on it. A job
        the worker never began (its start mark says) is the "not sent, try
        another" of :meth:`_run`."""
        job = self._job
        if job is not None and not job.settled:
            self._unstarted = job.lost(self._mark.last(), self._unstarted_error, self._caller_error)
        if job is not None and job.orphaned:
            self._job_over(job)
        self._init_settled.set()

    def _report_unused_death(self) -> None:
        """A warm worker that ended before it began any job, by no decision
        of ours (we were not retiring it), is a failed start for its owner."""
        if self._events is None or not self._ready or self._retiring:
            return
        if self._mark.began_any():
            return
        error = WorkerStartError(
            f"worker died before its first job ({describe_exit(self._returncode)})",
            pid=self.pid,
            phase="idle",
            returncode=self._returncode,
        )
        if self._reason is not None:
            error.__cause__ = self._reason.build(self.pid, self._returncode)
        self._events("died_unused", self.pid, error)

    async def _kill_and_reap(self) -> None:
        if self._exited.is_set():
            return
        self.kill()
        with trio.CancelScope(shield=True), trio.move_on_after(_REAP_DEADLINE):
            await self._exited.wait()
        if not self._exited.is_set():
            logger.error("worker pid=%d was not reaped %gs after SIGKILL", self.pid, _REAP_DEADLINE)

    def _protocol_violation(self, what: str) -> None:
        if not self._exited.is_set():
            self._end_for(ProtocolError, f"worker broke the protocol: {what}")
            logger.error("worker pid=%d broke the protocol (%s); killing it", self.pid, what)
            self.kill()

    # -- lifecycle: the owning task (supervise) runs these ----------------------

    @asynccontextmanager
    async def _supervised(self) -> AsyncIterator[None]:
        """Run the background tasks around initialization and the owner's
        block; on the way out, however it goes, stop and reap the child.

        A service nursery: the body is cancelled first, so its shielded
        ``aclose`` still has the reader and the exit watcher working for it.
        """
        opts = self._options
        try:
            with collapse_single_group():
                async with open_service_nursery() as nursery:
                    self._channel.start(nursery)
                    nursery.start_soon(self._watch_exit_and_timer)
                    nursery.start_soon(self._read_forever)
                    if opts.memory_limit_mb is not None or opts.memory_warn_mb is not None:
                        # From spawn: an initializer over the limit is a start failure
                        # (with backoff), not a warm worker killed and respawned forever.
                        nursery.start_soon(self._sample_memory_forever)
                    try:
                        await self._initialize()
                        self._timer.arm("ping", trio.current_time() + opts.ping_interval)
                        yield
                    finally:
                        if not self._exited.is_set():  # (an ended worker's aclose is a no-op)
                            with trio.CancelScope(shield=True):
                                await self.aclose()
                        nursery.cancel_scope.cancel()
        finally:
            self._channel.close()
            self._mark.close()

    async def _initialize(self) -> None:
        """Wait for the first of: ready, raised, exited, ``init_timeout``
        (INIT is already on its way: see :class:`ParentChannel`). On failure
        the child is killed and reaped and WorkerStartError raised."""
        self._timer.arm("init", trio.current_time() + self._options.init_timeout)
        await self._init_settled.wait()  # by an answer, the exit, or the timer's kill
        self._timer.disarm("init")
        if self._ready:
            self._enter("idle")
            return
        await self._kill_and_reap()
        raise self._caller_error()

    async def _watch_exit_and_timer(self) -> None:
        """Wait for the process to end. The wait is also the worker's timer:
        at its deadline, :meth:`_timer_fired` acts on what fell due."""
        while True:
            with self._timer.next_wait():
                self._returncode = await self._process.wait()
                break
            self._timer_fired()
        if not self._reader_done.is_set():  # what it wrote before dying still counts
            with trio.move_on_after(_DRAIN_GRACE):
                await self._reader_done.wait()
        self._report_unused_death()
        self._settle_on_exit()
        self._exited.set()

    def _timer_fired(self) -> None:
        due = self._timer.pop_due(trio.current_time())
        if "init" in due and not self._init_settled.is_set():
            self._end_for(
                WorkerStartError,
                "initializer did not finish in time",
                setting=f"init_timeout={self._options.init_timeout:g}s",
            )
            self.kill()
        if "eof" in due and not self._process.has_ended():
            # (Ended: its exit is on the way, however slowly a loaded machine
            # or a fork server reports it; the exit watcher settles it.)
            self._protocol_violation("worker closed its channel but kept running")
        if "ping" in due:
            self._ping_due()
        if "job" in due:
            self._job_timed_out()
        if "cancel" in due:
            self.kill()  # a timed-out job did not stop within cancel_grace
        if "trim" in due:
            self._trim_due()

    def _join_pool(self, idle_pings: IdlePings) -> None:
        """A pool took this worker: while idle, it is pinged at the pool's rate."""
        self._idle_pings = idle_pings
        if self._ping_stamp is None:
            self._arm_next_ping(trio.current_time())

    def _arm_next_ping(self, now: float) -> None:
        gap = self._options.ping_interval
        if self._idle_pings is not None and self._phase == "idle":
            gap = self._idle_pings.gap(gap)
            self._ping_late = gap > self._options.ping_interval
        self._timer.arm("ping", now + gap)

    def _ping_due(self) -> None:
        """Send a ping, or give up on the last one."""
        opts = self._options
        if self._ping_stamp is not None:  # no PONG within ping_timeout
            self._end_for(
                WorkerUnresponsiveError,
                "worker did not answer a ping",
                setting=f"ping_timeout={opts.ping_timeout:g}s",
            )
            self.kill()
            return
        self._ping_stamp = trio.current_time()
        # If this cannot go, the worker's control thread is stuck: no answer
        # comes, and the next deadline gives up on it.
        self._channel.send_control(_wire.encode(Kind.PING, self._ping_stamp))
        self._timer.arm("ping", self._ping_stamp + opts.ping_timeout)

    def _receive_now(self) -> None:
        """Dispatch what the worker has already sent (see ParentChannel)."""
        try:
            self._channel.receive_now(self._dispatch)
        except _wire.FrameError as exc:
            self._protocol_violation(str(exc))

    async def _read_forever(self) -> None:
        try:
            await self._channel.receive_forever(self._dispatch)
        except _wire.FrameError as exc:
            self._protocol_violation(str(exc))
        finally:
            self._reader_done.set()
        # EOF. A child that closes its channel yet keeps running is broken.
        self._timer.arm("eof", trio.current_time() + _DRAIN_GRACE)

    def _dispatch(self, kind: int, fields: tuple[Any, ...]) -> None:
        if kind in _JOB_ANSWERS:
            job = self._job
            if job is not None and job.expired:
                return  # timed out (or a batch's job that followed it): the exit settles it
            if job is None or job.settled or fields[0] != job.id:
                raise _wire.FrameError(f"{_wire.NAMES[kind]} for a job that is not running")
            self._settle_job(job, kind, fields)
            if job.orphaned:
                self._job_over(job)
        elif kind == Kind.LOG:
            _forward_log_record(self.pid, self.slot, *fields)
        elif kind == Kind.ALLOC:
            self._alloc_result(*fields)
        elif kind == Kind.TRIMMED:
            job = self._job
            if job is None or job.expired:
                return  # a timed-out batch: the exit settles it
            if not job.give_back_from(fields[0], self._given_back_error):
                raise _wire.FrameError("TRIMMED for batch jobs that were not asked back")
        elif kind == Kind.RETIRE:  # a background task failed (the worker logged how)
            logger.warning("worker pid=%d retires: %s", self.pid, fields[0])
            self._retiring = True
            if self._phase == "idle":
                self._enter("shutdown")
            self._send_quietly(_wire.encode(Kind.STOP))  # read after the job it runs, if any
        elif kind == Kind.PONG:
            if fields[0] != self._ping_stamp:
                raise _wire.FrameError("PONG does not echo the outstanding ping")
            now = trio.current_time()
            self.last_ping_rtt = now - fields[0]
            self._ping_stamp = None
            self._arm_next_ping(now)
        elif self._retiring:
            pass  # an answer to an initialization we gave up on
        elif self._init_settled.is_set() or self._phase != "init":
            raise _wire.FrameError(f"{_wire.NAMES[kind]} after initialization")
        elif kind == Kind.READY:
            if fields[0] != self.pid:
                raise _wire.FrameError(f"READY from pid {fields[0]}, expected {self.pid}")
            self._ready = True
            self._init_settled.set()
        elif kind == Kind.IMPORT_FAILED:
            if self._learned is not None:
                self._learned.drop(fields[0], self.pid)
        else:  # INIT_FAILED
            self._initializer_raised(*fields)
            self._init_settled.set()

    def _initializer_raised(self, type_name: str, message: str, tb: str, data: bytes) -> None:
        self._end_for(
            WorkerStartError,
            f"initializer raised {type_name}: {message}",
            details={"remote_type": type_name, "remote_traceback": tb},
            cause=RemoteTraceback(tb),
        )

    async def _sample_memory_forever(self) -> None:
        from ._memory import sample_memory_mb

        opts = self._options
        warned_at = -_MEMORY_WARN_EVERY
        while True:
            try:
                sample = await trio.to_thread.run_sync(sample_memory_mb, self.pid)
            except RuntimeError as exc:  # can't start new thread: skip this sample
                logger.warning("worker pid=%d: no memory sample: %s", self.pid, exc)
                await trio.sleep(opts.memory_interval)
                continue
            if sample is None:
                return  # the process is gone; the exit watcher reports it
            self.memory_mb, self.memory_metric = sample
            mb, metric = sample
            if opts.memory_limit_mb is not None and mb > opts.memory_limit_mb:
                self._end_for(
                    MemoryLimitError,
                    f"worker used {mb:.1f} MiB ({metric}), over the limit",
                    setting=f"memory_limit_mb={opts.memory_limit_mb:g}",
                    details={"measured_mb": mb, "limit_mb": opts.memory_limit_mb, "metric": metric},
                )
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

    # -- what the worker says ------------------------------------------------------

    def _send_quietly(self, frame: bytes) -> None:
        """Send, ignoring a channel the child already closed (it is dying)."""
        try:
            self._channel.send_nowait(frame)
        except trio.BrokenResourceError:
            pass

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

    def _settle_job(self, job: _Job, kind: int, fields: tuple[Any, ...]) -> None:
        job.answered = True
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


class _Timer:
    """The worker's deadlines, all served by one wait (the exit watcher's).

    A deadline is armed while it has a time here; the wait's scope always has
    the earliest armed time. The deadlines:

    * ``"init"``: ``init_timeout`` from the start of initialization;
    * ``"eof"``: the grace after EOF for the process to end;
    * ``"ping"``: send a ping, or, while one is out, give up on it;
    * ``"job"``: the running job's ``timeout``, from when it was sent;
    * ``"cancel"``: ``cancel_grace`` after a timed-out job was asked to stop.
    """

    __slots__ = ("_at", "_scope")

    def __init__(self) -> None:
        self._at: dict[str, float] = {}
        self._scope = trio.CancelScope()  # the watcher's current wait

    # The scope's deadline is written only when the earliest time changes:
    # each write of an entered scope's deadline costs trio a re-registration.
    def arm(self, name: str, at: float) -> None:
        before = self._at.get(name)
        self._at[name] = at
        if at < self._scope.deadline:
            self._scope.deadline = at
        elif before == self._scope.deadline:  # it was the earliest, and is later now
            self._scope.deadline = min(self._at.values())

    def disarm(self, name: str) -> None:
        at = self._at.pop(name, None)
        if at is not None and at == self._scope.deadline:
            self._scope.deadline = min(self._at.values(), default=math.inf)

    def next_wait(self) -> trio.CancelScope:
        """A fresh scope for the watcher's next wait, due at the earliest deadline."""
        self._scope = trio.CancelScope(deadline=min(self._at.values(), default=math.inf))
        return self._scope

    def pop_due(self, now: float) -> tuple[str, ...]:
        """Disarm and return the deadlines that have passed."""
        due = tuple(name for name, at in self._at.items() if at <= now)
        for name in due:
            del self._at[name]
        return due


class _Reason:
    """Why the parent ends a worker, recorded when it decides; the error is
    built from it once, when someone must see it (:meth:`Worker._caller_error`)."""

    __slots__ = ("cause", "cls", "details", "phase", "setting", "what")

    def __init__(
        self,
        cls: type[WorkerError],
        what: str,
        phase: str,
        setting: str | None,
        details: Mapping[str, object],
        cause: BaseException | None,
    ) -> None:
        self.cls = cls
        self.what = what
        self.phase = phase  # the worker's phase when it was decided
        self.setting = setting
        self.details = details  # attributes of that error class (MemoryLimitError.measured_mb...)
        self.cause = cause

    def build(self, pid: int, returncode: int | None, phase: str | None = None) -> WorkerError:
        error = self.cls(
            self.what,
            pid=pid,
            phase=self.phase if phase is None else phase,
            returncode=returncode,
            setting=self.setting,
        )
        for name, value in self.details.items():
            setattr(error, name, value)
        return error


def _start_error(reason: _Reason | None, pid: int, returncode: int | None) -> WorkerStartError:
    """A failed start's error: the reason's own when it is one (the
    initializer raised, or timed out), else one that names the reason (an
    exit, a protocol error, the memory limit) and has its error as cause."""
    cause: BaseException | None = None
    if reason is None:
        error = WorkerStartError(
            "worker exited during initialization", pid=pid, phase="init", returncode=returncode
        )
    elif reason.cls is WorkerStartError:
        error = reason.build(pid, returncode)  # type: ignore[assignment]
        cause = reason.cause
    else:
        cause = reason.build(pid, returncode)
        error = WorkerStartError(
            reason.what, pid=pid, phase="init", returncode=returncode, setting=reason.setting
        )
    error.__cause__ = cause  # as `raise error from cause` would
    error.__suppress_context__ = True
    return error


def _take_ids(count: int) -> int:
    """Reserve ``count`` consecutive job ids (a batch's); returns the first."""
    first = next(_job_ids)
    collections.deque(itertools.islice(_job_ids, count - 1), maxlen=0)
    return first


def _forward_log_record(
    pid: int,
    slot: int,
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
    """Hand a worker's LOG record to the parent's logger of the same name."""
    target = logging.getLogger(name)
    if not target.isEnabledFor(level):
        return
    record = target.makeRecord(
        name,
        level,
        path,
        line,
        f"[worker pid={pid}] {message}",
        (),
        None,
        func,
        extra=record_extra(extra, worker_pid=pid, worker_slot=slot),
    )
    record.created = created
    record.process = pid
    record.exc_text = exc_text or None
    target.handle(record)


def _init_frame(
    options: WorkerOptions, slot: int, spawner: Spawner, learned: LearnedModules | None = None
) -> bytes:
    return _wire.encode(
        Kind.INIT,
        options.initializer_payload,
        options.max_jobs or 0,
        logging.getLogger().getEffectiveLevel(),
        options.max_message_bytes,
        options.shm_min_bytes or 0,
        options.worker_loop or "",
        learned.field(options.init_timeout) if learned is not None else "",
        *startup_fields(
            name=options.name or "",  # never None: WorkerOptions derives it
            slot=slot,
            env=options.env,
            capture_output=options.capture_output,
            environ_base=getattr(spawner, "environ_base", None),
        ),
    )


@asynccontextmanager
async def supervise(
    options: WorkerOptions,
    spawner: Spawner,
    events: WorkerEvents | None = None,
    slot: int = 0,
    *,
    learned: LearnedModules | None = None,
) -> AsyncIterator[Worker]:
    """Start a worker and own it until the block exits; see :func:`open_worker`.

    ``events`` hears of the worker's life (:data:`WorkerEvents`), from
    ``"start"`` (the process exists, it is not warm yet) on. ``slot`` is the
    worker's slot in its pool.
    """
    init = _init_frame(options, slot, spawner, learned)
    channel = mark = None
    try:
        channel = ParentChannel(options.max_message_bytes, init)
        mark = StartMark()
        process = await spawner.spawn(*channel.child_fds, mark.child_fd)
    except BaseException as exc:
        if channel is not None:
            channel.close()
        if mark is not None:
            mark.close()
        error = start_failure(exc)
        if error is None:
            raise
        raise error from exc
    finally:
        if channel is not None:
            channel.child_spawned()
    worker = Worker._create(options, process, channel, mark, events, slot, learned)
    if events is not None:
        events("start", process.pid, None)
    async with worker._supervised():
        yield worker


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
    memory_interval: float = 0.5,
    recycle_above_mb: float | None = None,
    cancel_grace: float = 1.0,
    max_message_bytes: int = 256 * 1024 * 1024,
    shm_min_bytes: int | None = 128 * 1024,
    start_method: str = "auto",
    preload: Sequence[str] = (),
    name: str | None = None,
    env: EnvOption = None,
    capture_output: bool = False,
    worker_loop: str | None = None,
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
        memory_interval: seconds between memory samples.
        recycle_above_mb: after a job, retire the worker gracefully (a pool
            replaces it) when it uses more than this many MiB; the job's
            result is still returned. ``None``: never.
        cancel_grace: seconds a cancelled job gets to stop before SIGKILL.
        max_message_bytes: the largest frame either side accepts.
        shm_min_bytes: a buffer at least this large in a job's arguments or
            result goes through shared memory; ``None``: never.
        start_method: ``"exec"`` or ``"forkserver"``; ``"auto"``:
            ``$PROCSUP_START_METHOD`` if set, else ``"exec"``.
        preload: modules a fork server imports once (a list of names).
        name: what ``ps`` and ``top`` show for the worker; ``None``: the
            initializer's qualified name, else ``""``.
        env: environment variables to set in the worker before its
            initializer: a mapping (``None`` removes a variable), or a
            callable taking the worker's slot and returning one.
        capture_output: turn each line the worker writes to its stdout or
            stderr into a log record in the parent.
        worker_loop: ``None``: an async job or initializer runs under a
            fresh ``trio.run`` per call; ``"asyncio"``, ``"uvloop"`` or
            ``"trio"``: one event loop for the worker's whole life, on which
            the initializer and every job run (see :ref:`async-jobs`).

    The reference's option table gives each default and unit; a test keeps
    it, this signature and :class:`~procsup._options.WorkerOptions` agreeing.

    Raises:
        WorkerStartError: the initializer raised, the worker exited, or
            ``init_timeout`` elapsed; the child is already killed and reaped.

    Leaving the block stops the worker gracefully, then by SIGKILL of its
    process group after ``shutdown_timeout``, and always reaps it.
    """
    opts = WorkerOptions.from_arguments(locals(), pool=False)
    async with open_spawner(opts) as spawner, supervise(opts, spawner) as worker:
        yield worker
