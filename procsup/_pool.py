"""The warm pool.

Ownership and waking, by construction:

* Every child is owned by one task in the pool's service nursery (its
  *lifetime* task). The task takes a start slot, warms the worker under its
  init deadline, gives the slot back, offers the worker, and holds it until
  it is retired or dies; leaving the task for any reason kills and reaps it.
* The registry (``Pool._members``) owns the workers; the ready channel only
  carries them to acquirers, and a stale entry (a worker that died while
  queued) is skipped on receipt.
* An acquirer waits on the ready channel inside a child of
  ``_start_failed_wakeup``, a MultiCancelScope cancelled whenever a start
  fails (and on close). Its attempt depends on the starts warming when it
  looked (those holding a start slot; every start in flight if none holds
  one). Woken, it uses up the attempt only when none of those is still in
  flight and every start that settled meanwhile failed; when some also
  succeeded (and served the waiters ahead of it), that was contention, and
  it depends on the next starts instead. So it never waits on a start that
  cannot come, and never burns an attempt while a start it depends on may
  still succeed.
* Nothing is held across a job: a start slot is held only while warming.
* A job goes from :meth:`Pool.run` to the worker's own ``_run``, whose
  ``None`` ("the worker died before the job was sent") is the only signal to
  try another worker, consumed in :meth:`Pool._run`.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import math
from collections import Counter
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import (
    AbstractAsyncContextManager,
    asynccontextmanager,
)
from typing import Any, Literal, TypeVar

import attrs
import trio
from tricycle import MultiCancelScope, open_service_nursery

from ._budget import _Budget
from ._errors import NoWorkerAvailableError, PoolClosedError, WorkerStartError
from ._events import EventHub, PoolEvent
from ._learn import LearnedModules
from ._limits import ensure_descriptors
from ._load import idle_target
from ._map import MapResults, open_map
from ._options import PoolOptions, WorkerOptions, check_timeout, pick
from ._outcomes import OUTCOMES, PoolObserver, job_outcome
from ._pings import IdlePings
from ._spawn import open_spawner
from ._startup import EnvOption
from ._util import NoPublicConstructor, collapse_single_group
from ._warming import StartRecord, StartSlots
from ._worker import Worker, WorkerEvents, supervise

__all__ = ["Pool", "PoolOptions", "PoolStatistics", "PooledWorker", "open_pool"]

T = TypeVar("T")
logger = logging.getLogger("procsup.pool")  # the scheme: see procsup._worker

WARMING, IDLE, BUSY, CLOSING, GONE = "warming", "idle", "busy", "closing", "gone"
# What may follow each state of a member (a new member is WARMING). Any
# state may end in GONE: the lifetime task's finally.
_NEXT_STATES: Mapping[str, frozenset[str]] = {
    WARMING: frozenset({IDLE, GONE}),  # warm; the start failed
    IDLE: frozenset({BUSY, CLOSING, GONE}),  # claimed; retired (died, pool closing)
    BUSY: frozenset({IDLE, CLOSING, GONE}),  # given back; retired; died during the block
    CLOSING: frozenset({GONE}),  # reaped
    GONE: frozenset(),
}
_EVENT_BUFFER = 1024

StartWorker = Callable[[WorkerEvents, int], AbstractAsyncContextManager[Worker]]
"""How the pool starts one worker, given its events hook and its slot, and owns
it for a block (``supervise`` with the pool's options and spawner; a fake one
in the virtual-time tests)."""


@attrs.frozen
class PoolStatistics:
    """A snapshot of a pool's bookkeeping (:meth:`Pool.statistics`).

    Attributes:
        idle: warm workers waiting for a job.
        warming: starts in flight (spawning, initializing, or queued for a
            start slot).
        busy: workers handed to a caller.
        closing: workers being stopped and reaped (exiting ones included).
        waiting: acquirers waiting for a worker.
        target_idle: the idle target at the current load.
        load: the current load, 0.0 to 1.0.
        starts: child processes started so far.
        start_failures: starts that failed so far (a warm worker that died
            before its first job, by no decision of the pool's, included).
        consecutive_start_failures: failures since the last success.
        health: ``"ok"``, or ``"degraded"`` while starts keep failing.
        last_start_error: the newest start failure, or ``None``.
        jobs_completed: jobs run through the pool that returned or raised.
        jobs_by_outcome: every job that ended (its ``job_finished`` event),
            however it ended: a count for each of ``"ok"``, ``"error"``,
            ``"crashed"``, ``"timeout"``, ``"cancelled"`` and ``"memory"``
            (see :doc:`metrics`). Unlike ``jobs_completed`` it counts jobs
            that crashed, timed out or were cancelled too.
        recycled: workers retired after a job for using more than
            ``recycle_above_mb``.
        state: ``"open"``; ``"draining"`` from the first line of
            :meth:`Pool.drain` (nothing new is taken); ``"closed"`` once a
            drain ended or the pool's block began to exit.
    """

    idle: int
    warming: int
    busy: int
    closing: int
    waiting: int
    target_idle: int
    load: float
    starts: int
    start_failures: int
    consecutive_start_failures: int
    health: str
    last_start_error: BaseException | None
    jobs_completed: int
    jobs_by_outcome: Mapping[str, int]
    recycled: int
    state: str

    @property
    def live(self) -> int:
        """Child processes that exist: idle + warming + busy + closing."""
        return self.idle + self.warming + self.busy + self.closing


class _Member:
    """The registry's record of one child and its state in the pool."""

    __slots__ = ("exiting", "lent", "retire_scope", "seq", "slot", "state", "worker")

    def __init__(self, seq: int, slot: int) -> None:
        self.seq = seq
        self.slot = slot  # held from the start until the process is reaped, or handed on
        self.exiting = False  # CLOSING, past its last answer, exiting on its own; counted
        # in Pool._exiting (not against max_workers) and its slot handed on (Pool._hand_on)
        self.state = WARMING  # changed by Pool._set_state only (_NEXT_STATES)
        self.worker: Worker | None = None  # set when warm, from then on
        self.retire_scope = trio.CancelScope()  # cancelled: the lifetime task closes it
        self.lent = False  # inside an acquire() block (BUSY; BUSY and not lent: a job its
        # caller left runs on, kill_on_cancel=False)


class PooledWorker(metaclass=NoPublicConstructor):
    """A warm worker lent by :meth:`Pool.acquire`, valid inside its block."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._lent = True  # False once the block has exited

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self._worker.pid

    @property
    def worker(self) -> Worker:
        """The underlying :class:`Worker`."""
        return self._worker

    async def run(
        self,
        fn: Callable[..., T],
        *args: Any,
        timeout: float | None = None,  # noqa: ASYNC109 -- counted from when the job is sent
        kill_on_cancel: bool = True,
    ) -> T:
        """Run one job; see :meth:`Worker.run`. With ``kill_on_cancel=False``
        a job its caller left runs on after the block, in a worker the pool
        still owns; it goes back to the pool when the job ends."""
        if not self._lent:
            raise RuntimeError("this worker was given back to the pool; acquire another")
        return await self._worker.run(fn, *args, timeout=timeout, kill_on_cancel=kill_on_cancel)

    def _give_back(self) -> None:
        self._lent = False


class Pool(metaclass=NoPublicConstructor):
    """A pool of pre-warmed workers. Made by :func:`open_pool`; it has no
    public constructor."""

    def __init__(
        self,
        options: PoolOptions,
        start_worker: StartWorker,
        nursery: trio.Nursery,
        worker_name: str = "",
    ) -> None:
        self._options = options
        self._worker_name = worker_name  # what the workers show in ps (procsup._startup)
        self._start_worker = start_worker
        self._nursery = nursery  # the lifetime tasks' and the keeper's
        self._closed = False  # set once, by _close: nothing starts, every acquirer leaves
        self._draining = False  # set once, by drain(), before _closed: as closed for
        # acquirers and starts, while busy workers finish
        # -- the registry: every child, by start number
        self._members: dict[int, _Member] = {}
        # The members' slots (procsup.worker_slot): every slot below
        # _next_slot that no member holds is in _free_slots, a heap.
        self._free_slots: list[int] = []
        self._next_slot = 0
        self._counts: Counter[str] = Counter()  # members by state, GONE not counted
        self._exiting = 0  # members with .exiting: in counts[CLOSING], <= options.max_exiting
        self._seq = itertools.count(1)
        # -- starts
        self._in_flight: set[int] = set()  # starts not yet settled (warm, failed or gone)
        self._start_slots = StartSlots(options.start_slots)
        self._idle_pings = IdlePings(lambda: self._counts[IDLE])
        self._record = StartRecord(options.backoff_base, options.backoff_cap)
        # -- acquisition
        # Warm members on offer; may hold stale ones (_claim skips them).
        self._ready_send, self._ready_recv = trio.open_memory_channel[_Member](math.inf)
        self._start_failed_wakeup = MultiCancelScope()  # cancelled (and renewed) per failure
        self._waiting = 0  # acquirers inside an attempt
        # -- timers and load
        self._timers_changed = trio.Event()  # set when the keeper's next due time moved
        self._polled_load = 0.0  # the load callable's last answer (only with options.load)
        self._jobs_completed = 0
        self._job_outcomes: Counter[str] = Counter()  # every job_finished, by outcome
        self._recycled = 0
        self._events = EventHub(options.on_event)
        self._changed_event: trio.Event | None = None  # made when someone waits

    # -- public --------------------------------------------------------------

    async def run(
        self,
        fn: Callable[..., T],
        *args: Any,
        timeout: float | None = None,  # noqa: ASYNC109 -- counted from when the job has a worker
        kill_on_cancel: bool = True,
    ) -> T:
        """Run ``fn(*args)`` in a warm worker and return its result.

        ``timeout`` (seconds; ``None``: none) counts from when the job
        reaches a worker, never the wait for one; past it the job is stopped,
        its worker reaped, and :class:`JobTimeoutError` raised. With
        ``kill_on_cancel=False``, cancelling the call leaves the job running
        to its end (or its timeout) in a worker the pool still owns, which
        then goes back to the pool; by default the worker is stopped. A call
        in an already-cancelled scope sends nothing. See :meth:`Worker.run`.

        A job whose worker ended before it began the job (found dead, killed
        while idle, stopped and given up on) runs on another worker, at most
        once in all, under the same ``acquire_timeout`` and attempts; once
        the worker has begun it, every outcome (result, the job's exception,
        a crash, a timeout) is the caller's. Raises what :meth:`acquire` and
        :meth:`Worker.run` raise.
        """
        return await self._run(fn, args, timeout, kill_on_cancel)  # type: ignore[no-any-return]

    def map(
        self,
        fn: Callable[[Any], T],
        iterable: Iterable[Any] | AsyncIterable[Any],
        *,
        max_in_flight: int | None = None,
        ordered: bool = True,
        timeout: float | None = None,
        return_exceptions: bool = False,
    ) -> AbstractAsyncContextManager[MapResults[T]]:
        """Run ``fn(item)`` for each item of ``iterable`` (sync or async,
        read lazily), at most ``max_in_flight`` at once: ``async with
        pool.map(fn, items) as results: async for value in results: ...``.

        Args:
            max_in_flight: jobs running at once; ``None``: the pool's
                ``max_workers``, or :func:`available_cpus` when it has no cap.
                At most two batches per job in flight are read ahead of the
                results yielded: two inputs per job in flight for jobs of
                20 ms or more, up to 512 (two batches of 256) for trivial
                ones, so memory stays constant however long the input. Workers take
                their inputs in batches (one order, the function pickled
                once), each input still its own job: see :ref:`many-inputs`.
            ordered: yield results in input order (a result that finishes
                early waits for the earlier ones); ``False``: as they complete.
            timeout: seconds each job may run, as in :meth:`run`.
            return_exceptions: ``False``: the first job error cancels the
                jobs in flight, reads no more input, and is raised, once they
                are all stopped, from the ``async for``. ``True``: a job's
                exception is yielded in place of its result, and the map goes on.

        Leaving the block early (``break``, an exception, cancellation)
        cancels the jobs in flight; their workers are stopped and reaped
        (as for a cancelled :meth:`run`) before the block is left. An
        exception raised by the iterable itself ends the map like a job
        error (whatever ``return_exceptions``). A sync iterable is advanced in
        the event loop's thread: one whose ``next()`` blocks should be an
        async iterable instead.
        """
        return open_map(
            self,
            fn,
            iterable,
            max_in_flight=max_in_flight,
            ordered=ordered,
            timeout=timeout,
            return_exceptions=return_exceptions,
        )

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[PooledWorker]:
        """Lend a warm worker for the block; give it back (or retire it) after.

        Waits for the first of: a warm worker; every start in flight failing
        (an attempt is used and a new start begins); ``acquire_timeout``.

        Raises:
            NoWorkerAvailableError: ``max_acquire_attempts`` attempts used, or
                ``acquire_timeout`` elapsed; carries the start errors.
            PoolClosedError: the pool is closed or closing.
        """
        member, worker = await self._acquire(_Budget(self._options))
        lease = PooledWorker._create(worker)
        try:
            yield lease
        finally:
            lease._give_back()
            self._release(member)

    async def wait_warm(self) -> None:
        """Wait until the idle target is met.

        Raises:
            NoWorkerAvailableError: starts keep failing (``max_acquire_attempts``
                consecutive failures); carries the last error.
            PoolClosedError: the pool closed.
        """
        record = self._record
        while True:
            self._check_open()
            stats = self.statistics()
            if stats.idle >= stats.target_idle:
                return
            if record.consecutive_failures >= self._options.max_acquire_attempts:
                raise NoWorkerAvailableError(
                    f"the pool could not warm: {record.consecutive_failures} starts failed "
                    "in a row",
                    [record.last_error] if record.last_error else [],
                )
            await self._changed().wait()

    def statistics(self) -> PoolStatistics:
        """A consistent snapshot of the pool's counts and health."""
        counts = self._counts
        record = self._record
        return PoolStatistics(
            idle=counts[IDLE],
            warming=counts[WARMING],
            busy=counts[BUSY],
            closing=counts[CLOSING],
            waiting=self._waiting,
            target_idle=self._target_idle(),
            load=self._load(),
            starts=record.spawned,
            start_failures=record.failures,
            consecutive_start_failures=record.consecutive_failures,
            health="degraded" if record.consecutive_failures else "ok",
            last_start_error=record.last_error,
            jobs_completed=self._jobs_completed,
            jobs_by_outcome={outcome: self._job_outcomes[outcome] for outcome in OUTCOMES},
            recycled=self._recycled,
            state="closed" if self._closed else "draining" if self._draining else "open",
        )

    async def drain(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 -- its grace
        """Stop taking work, let busy jobs finish, and return once no child
        process remains.

        From its first line (before it yields), :meth:`acquire`, :meth:`run`
        and :meth:`wait_warm` raise :class:`PoolClosedError` and waiting
        acquirers are woken with it; no worker starts; idle workers are
        stopped and warming ones killed. Busy workers (a job, or an
        :meth:`acquire` block) get ``timeout`` seconds (``None``: no limit)
        to finish; then their jobs are stopped at once (SIGKILL) and their
        callers get :class:`WorkerClosedError`. A job left running with
        ``kill_on_cancel=False`` counts as busy.

        Idempotent: a second call (concurrent or later) waits for the same
        end, and the earliest deadline wins. Afterwards
        :attr:`PoolStatistics.state` is ``"closed"`` and leaving the pool's
        block is instant. See :ref:`deployment` for a service's SIGTERM.
        """
        check_timeout(timeout)
        if not self._draining:
            self._draining = True
            self._wake_waiters()
            self._retire_all_but_busy()
            self._notify_changed()
        with trio.move_on_after(math.inf if timeout is None else timeout):
            while self._counts[BUSY]:
                await self._changed().wait()
        if self._counts[BUSY]:
            self._stop_busy(f"the pool's drain timed out (timeout={timeout:g}s)")
        self._close()
        while self._members:  # each reaped within its shutdown_timeout, or after a SIGKILL
            await self._changed().wait()

    @asynccontextmanager
    async def events(
        self, buffer: int = _EVENT_BUFFER
    ) -> AsyncIterator[trio.MemoryReceiveChannel[PoolEvent]]:
        """Subscribe to lifecycle events: ``async with pool.events() as events:
        async for event in events: ...``.

        The subscription never slows the pool: past ``buffer`` undelivered
        events, new ones are dropped for this subscriber.
        """
        async with self._events.subscribe(buffer) as receive:
            yield receive

    @property
    def name(self) -> str:
        """The name the pool's workers show in ``ps`` and ``top`` (``name=``)."""
        return self._worker_name

    @property
    def closed(self) -> bool:
        """True once the pool's ``async with`` block has started to exit, or
        :meth:`drain` has ended (while it drains: :attr:`PoolStatistics.state`)."""
        return self._closed

    # -- lifecycle: open_pool runs these -------------------------------------------

    @classmethod
    @asynccontextmanager
    async def _open(
        cls, options: PoolOptions, start_worker: StartWorker, worker_name: str = ""
    ) -> AsyncIterator[Pool]:
        """A running pool for the block; on the way out, however it goes,
        every waiter is woken and every child stopped and reaped."""
        with collapse_single_group():
            async with open_service_nursery() as nursery:
                pool = cls._create(options, start_worker, nursery, worker_name)
                pool._start()
                try:
                    yield pool
                finally:
                    pool._close()
                    nursery.cancel_scope.cancel()

    def _start(self) -> None:
        if self._options.load is not None:
            self._polled_load = self._call_load()
        self._rebalance()  # warming starts now, not at the keeper's first turn
        self._nursery.start_soon(self._keep_warm)

    def _close(self) -> None:
        self._closed = True
        self._wake_waiters()
        self._retire_all_but_busy()
        for member in list(self._members.values()):
            member.retire_scope.cancel()
        self._notify_changed()

    def _retire_all_but_busy(self) -> None:
        """Stop idle workers (gracefully) and warming ones (killed)."""
        for member in list(self._members.values()):
            if member.state == IDLE:
                self._set_state(member, CLOSING)
            if member.state != BUSY:
                member.retire_scope.cancel()

    def _stop_busy(self, why: str) -> None:
        """Kill every busy worker's job now: its caller gets WorkerClosedError."""
        for member in list(self._members.values()):
            if member.state == BUSY and member.worker is not None:
                member.worker._stop_now(why)

    # -- a job -----------------------------------------------------------------

    async def _run(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        timeout: float | None = None,  # noqa: ASYNC109 -- counted from when the job has a worker
        kill_on_cancel: bool = True,
    ) -> Any:
        """Run one job in a warm worker; the one loop that acts on a worker's
        "not sent, try another" (``None`` from ``Worker._run``)."""
        if not callable(fn):  # before a worker is started for it
            raise TypeError(f"job must be callable, got {fn!r}")
        check_timeout(timeout)
        budget = _Budget(self._options)  # one for every worker this job is offered to
        while True:
            member, worker = await self._acquire(budget)
            try:
                job = await worker._run(fn, args, timeout, kill_on_cancel)
                if job is not None:
                    return job.unwrap()
            finally:
                self._release(member)
            self._spend_on_unused_death(worker, budget)  # then try another

    def _spend_on_unused_death(self, worker: Worker, budget: _Budget) -> None:
        """``worker`` ended before it began its caller's job. While workers
        keep dying before their first job (as many failed starts in a row as
        a caller has attempts), each try uses one of ``budget``'s attempts:
        NoWorkerAvailableError once none is left."""
        streak = self._record.consecutive_failures
        if worker.jobs_done == 0 and streak >= self._options.max_acquire_attempts:
            budget.failed(self._record.last_error)

    def _worker_event(
        self, member: _Member, kind: str, pid: int, error: BaseException | None
    ) -> None:
        """What a member's worker reports of its life (:data:`WorkerEvents`)."""
        if kind == "start":
            self._record.spawned += 1
        elif kind == "job_completed":
            self._jobs_completed += 1
            self._record.confirmed()
            return
        elif kind == "died_unused":
            assert isinstance(error, WorkerStartError)
            self._record.lost(error, trio.current_time())
            self._start_settled_badly(error)
            return
        elif kind == "job_finished":
            self._job_outcomes[job_outcome(error)] += 1
        elif kind == "recycled":
            self._recycled += 1
        self._events.emit(kind, pid, error=error)
        if kind == "job_finished" and not member.lent:
            self._release(member)  # a job its caller left has ended

    def _observe(self, observer: PoolObserver, *, stop: bool = False) -> None:
        """Start (or stop) telling ``observer`` what happens here."""
        if stop:
            self._events.observers.remove(observer)
        else:
            self._events.observers.append(observer)

    # -- acquisition -----------------------------------------------------------

    async def _acquire(self, budget: _Budget) -> tuple[_Member, Worker]:
        self._check_open()
        got = self._take_ready()  # the common case: no wait, so no deadline scope
        if got is not None:
            return self._acquired(got, 0.0)
        begun = trio.current_time()
        with budget.waiting():
            while True:
                budget.check()
                got = await self._wait_one_attempt()
                if got is not None:
                    return self._acquired(got, trio.current_time() - begun)
                budget.failed(self._record.last_error)
        raise budget.timed_out()

    def _acquired(self, got: tuple[_Member, Worker], waited: float) -> tuple[_Member, Worker]:
        # A replacement starts warming now; not from _claim, where the
        # claimer still counts as waiting (one start too many).
        self._rebalance()
        for observer in self._events.observers:
            observer.acquired(waited)
        return got

    async def _wait_one_attempt(self) -> tuple[_Member, Worker] | None:
        """Wait until a worker arrives (returned), or until a start failed and
        no start this attempt depends on is still in flight (None)."""
        got = self._take_ready()
        if got is not None:
            return got
        record = self._record
        self._waiting += 1
        failures_before = record.failures
        successes_before = record.successes
        try:
            self._rebalance()
            pending = self._depended_on()
            while True:
                got = self._take_ready()
                if got is not None:
                    return got
                member = None
                with self._start_failed_wakeup.open_child():
                    member = await self._ready_recv.receive()
                self._check_open()
                if member is not None:
                    got = self._claim(member)
                    if got is not None:
                        return got
                    continue  # a stale entry
                if pending & self._in_flight:
                    continue  # a start we depend on may still succeed
                if record.failures > failures_before:
                    if record.successes <= successes_before:  # a lost one is taken back
                        return None  # every start that settled meanwhile failed
                    # Starts also succeeded (and served the waiters ahead of
                    # us): contention, not a failed round; watch the next one.
                    failures_before = record.failures
                    successes_before = record.successes
                self._rebalance()
                pending = self._depended_on()
        finally:
            self._waiting -= 1

    def _depended_on(self) -> set[int]:
        """The starts an attempt waits for: those warming now, not those
        queued for a start slot (they would add a whole init_timeout)."""
        return set(self._start_slots.holders) or set(self._in_flight)

    def _take_ready(self) -> tuple[_Member, Worker] | None:
        while True:
            try:
                member = self._ready_recv.receive_nowait()
            except trio.WouldBlock:
                return None
            got = self._claim(member)
            if got is not None:
                return got

    def _claim(self, member: _Member) -> tuple[_Member, Worker] | None:
        worker = member.worker
        if member.state != IDLE or worker is None or not worker.accepting_jobs:
            return None
        self._set_state(member, BUSY)
        member.lent = True
        return member, worker

    def _release(self, member: _Member) -> None:
        worker = member.worker
        if member.state != BUSY:
            return
        member.lent = False
        if worker is not None and worker._job_runs_on and not self._closed:
            return  # busy until the job its caller left ends: then released again
        if self._closed or self._draining or worker is None or not worker.accepting_jobs:
            self._set_state(member, CLOSING)
            if worker is not None and worker.exiting:
                # It exits on its own: a deadline, not a cancel, so that the
                # lifetime's wait for the exit usually just returns (a Cancelled
                # unwinding the worker's nursery and context managers costs the
                # parent more than the rest of a one-shot worker's life). Past
                # the deadline the cancel comes, and aclose() kills it at once.
                member.retire_scope.deadline = worker._stop_deadline()
                self._hand_on(member)
            else:
                member.retire_scope.cancel()
        else:
            self._set_state(member, IDLE)
            self._ready_send.send_nowait(member)
        self._rebalance()

    def _hand_on(self, member: _Member) -> None:
        """A worker past its last answer that exits on its own runs none of
        the pool's jobs again: while fewer than ``max_exiting`` others do,
        it stops counting against ``max_workers`` and hands its slot to its
        replacement, which starts warming now instead of after the reap."""
        if self._exiting >= self._options.max_exiting:
            return
        member.exiting = True
        self._exiting += 1
        heapq.heappush(self._free_slots, member.slot)

    # -- warming ---------------------------------------------------------------

    def _rebalance(self, *, for_waiters: bool = True) -> None:
        """Start what is missing: one start per waiter not covered by a start
        in flight, at once; then starts towards the idle target, unless
        backing off after failures (then one probe at a time).

        ``for_waiters=False`` after a failed start: the waiters it woke may
        be giving up (NoWorkerAvailableError); those that go on start their
        own next round (:meth:`_wait_one_attempt`), and nobody is left with
        a start made for a caller that is gone."""
        if self._closed or self._draining:
            return
        counts = self._counts
        capacity = math.inf
        if self._options.max_workers is not None:
            capacity = self._options.max_workers - (sum(counts.values()) - self._exiting)
        waiting = self._waiting - counts[WARMING] - counts[IDLE] if for_waiters else 0
        for_target = self._target_idle() - counts[IDLE] - max(counts[WARMING] - self._waiting, 0)
        if self._record.consecutive_failures:
            for_target = min(for_target, 1 - counts[WARMING])
            if trio.current_time() < self._record.backoff_until:
                for_target = 0
        wanted = max(waiting, 0) + max(for_target, 0)
        for _ in range(int(min(wanted, capacity))):
            self._start_one()

    def _start_one(self) -> None:
        slot = self._take_slot()
        member = _Member(next(self._seq), slot)
        self._members[member.seq] = member
        self._in_flight.add(member.seq)
        self._counts[WARMING] += 1
        self._notify_changed()
        self._start_slots.request(member.seq)
        self._nursery.start_soon(self._lifetime, member, name=f"procsup-worker-{member.seq}")

    def _take_slot(self) -> int:
        """The lowest slot no member holds (O(log workers), not a scan)."""
        if self._free_slots:
            return heapq.heappop(self._free_slots)
        self._next_slot += 1
        return self._next_slot - 1

    async def _lifetime(self, member: _Member) -> None:
        """Own one child from spawn to reap."""
        try:
            with member.retire_scope:  # cancelled while warming: the start is killed
                await self._start_slots.wait(member.seq)
                try:
                    async with self._start_worker(
                        functools.partial(self._worker_event, member), member.slot
                    ) as worker:
                        self._start_slots.release(member.seq)
                        self._ready(member, worker)
                        try:
                            await worker.wait_exited()
                        finally:
                            if member.state == IDLE:
                                self._set_state(member, CLOSING)
                except WorkerStartError as exc:
                    if member.worker is not None:
                        raise  # not from the start (it cannot be, but never swallow one)
                    self._start_failed(member, exc)
        finally:
            self._start_slots.release(member.seq)
            self._gone(member)

    def _ready(self, member: _Member, worker: Worker) -> None:
        member.worker = worker
        worker._join_pool(self._idle_pings)
        self._in_flight.discard(member.seq)
        recovered = self._record.consecutive_failures > 0
        self._record.succeeded()
        self._set_state(member, IDLE)
        self._events.emit("ready", worker.pid)
        self._ready_send.send_nowait(member)
        if recovered:  # the probe succeeded: warm the rest now, not at the next event
            self._rebalance()

    def _start_failed(self, member: _Member, exc: WorkerStartError) -> None:
        self._in_flight.discard(member.seq)
        self._record.failed(exc, trio.current_time())
        self._start_settled_badly(exc)

    def _start_settled_badly(self, exc: WorkerStartError) -> None:
        """After a failed start (recorded): the backoff timer, the event, the waiters."""
        self._timers_changed.set()
        self._events.emit("start_failed", exc.pid, error=exc)
        self._wake_waiters()

    def _gone(self, member: _Member) -> None:
        self._in_flight.discard(member.seq)
        self._set_state(member, GONE)
        del self._members[member.seq]
        if member.exiting:
            self._exiting -= 1  # its slot went on already
        else:
            heapq.heappush(self._free_slots, member.slot)
        worker = member.worker
        if worker is not None:
            self._events.emit("exited", worker.pid, returncode=worker.returncode)
        self._rebalance(for_waiters=worker is not None)

    def _wake_waiters(self) -> None:
        self._start_failed_wakeup.cancel()
        self._start_failed_wakeup = MultiCancelScope()

    async def _keep_warm(self) -> None:
        """Re-run the balance when a timer falls due: the end of a backoff,
        and the next poll of a ``load`` callable. Everything else rebalances
        at the moment it happens."""
        next_poll = -math.inf
        while True:
            now = trio.current_time()
            if self._options.load is not None and now >= next_poll:
                self._polled_load = self._call_load()
                next_poll = now + self._options.load_interval
            self._rebalance(for_waiters=False)  # waiters start their own (not held back)
            due = next_poll if self._options.load is not None else math.inf
            if self._record.backoff_until > now:
                due = min(due, self._record.backoff_until)
            self._timers_changed = trio.Event()
            with trio.move_on_at(due):
                await self._timers_changed.wait()

    # -- bookkeeping -------------------------------------------------------------

    def _set_state(self, member: _Member, state: str) -> None:
        assert state in _NEXT_STATES[member.state], f"{member.state} -> {state}"
        self._counts[member.state] -= 1
        member.state = state
        if state != GONE:
            self._counts[state] += 1
        self._notify_changed()

    def _changed(self) -> trio.Event:
        """Set at the next change of the counts (or of the pool's state)."""
        if self._changed_event is None:
            self._changed_event = trio.Event()
        return self._changed_event

    def _notify_changed(self) -> None:
        if self._changed_event is not None:
            self._changed_event.set()
            self._changed_event = None

    def _load(self) -> float:
        if self._options.load is not None:
            return self._polled_load
        if self._options.max_workers:
            return self._counts[BUSY] / self._options.max_workers
        return 0.0

    def _call_load(self) -> float:
        assert self._options.load is not None
        try:
            value = float(self._options.load())
        except Exception:
            logger.exception("the pool's load callable raised; treating load as 1.0")
            return 1.0
        return 1.0 if math.isnan(value) else min(max(value, 0.0), 1.0)

    def _target_idle(self) -> int:
        return idle_target(self._options.idle, self._load(), self._options.load_threshold)

    def _check_open(self) -> None:
        if self._closed:
            raise PoolClosedError("the pool is closed; open a new one with procsup.open_pool()")
        if self._draining:
            raise PoolClosedError(
                "the pool is draining (pool.drain() was called) and takes no new jobs; "
                "open a new one with procsup.open_pool()"
            )


@asynccontextmanager
async def open_pool(
    initializer: Callable[[], Any] | str | None = None,
    *,
    idle: int | Literal["auto"] = "auto",
    max_workers: int | Literal["auto"] | None = "auto",
    init_timeout: float = 10.0,
    max_concurrent_starts: int | None = None,
    max_acquire_attempts: int = 3,
    acquire_timeout: float | None = None,
    load: Callable[[], float] | None = None,
    load_threshold: float = 0.7,
    load_interval: float = 1.0,
    backoff_base: float = 0.1,
    backoff_cap: float = 30.0,
    on_event: Callable[[PoolEvent], object] | None = None,
    learn_modules: bool = True,
    max_exiting: int = 2,
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
) -> AsyncIterator[Pool]:
    """Open a pool that keeps ``idle`` workers warm; returns at once.

    Args:
        initializer: run once in each worker (see :func:`open_worker`).
        idle: warm workers to keep at zero load; ``"auto"``: 4, or
            ``max_workers`` if that is less.
        max_workers: cap on live children (idle + warming + busy + closing);
            acquirers beyond it wait in FIFO order. ``"auto"``:
            :func:`available_cpus`, or ``idle`` if that is more (an ``idle``
            given is never refused by the default cap). ``None``: no cap.
            Up to ``max_exiting`` workers past their last answer that exit
            on their own (``max_jobs``, ``recycle_above_mb``) are not counted
            while they exit: their replacements warm meanwhile, on their slots.
        init_timeout: seconds a start may take, counted from when it gets a
            start slot (not while queued for one).
        max_concurrent_starts: workers warming at once (default:
            :func:`available_cpus`).
        max_acquire_attempts: failed start rounds an acquirer sits through
            before :class:`NoWorkerAvailableError`.
        acquire_timeout: seconds an acquirer may wait in all (for
            :meth:`Pool.run`: across every worker its job is offered to);
            ``None``: no limit beyond the attempts.
        load: callable returning the load, 0.0 to 1.0, polled every
            ``load_interval`` seconds; default ``busy / max_workers`` when
            ``max_workers`` is set, else 0.
        load_threshold: the load at which the idle target reaches 0.
        load_interval: seconds between calls of ``load``.
        backoff_base: seconds of the first delay after a failed start.
        backoff_cap: the longest delay between failing starts, in seconds.
        on_event: a callback given every :class:`PoolEvent`.
        learn_modules: import the modules of jobs already run (and of their
            arguments) ahead of the next jobs: once in a fork server's
            template, else in each worker while it warms (see
            :ref:`learned-modules`); ``False`` turns it off.
        max_exiting: how many workers past their last answer, exiting on
            their own, may be replaced before they are reaped (beyond
            ``max_workers``; see :ref:`exiting workers <exiting-workers>`); ``0``: a worker
            counts against ``max_workers`` until it is reaped (for a resource,
            such as GPU memory, that is only freed when the process is gone).
        start_method: as for :func:`open_worker`, but ``"auto"`` means
            ``"forkserver"`` on Linux (``"exec"`` elsewhere), and
            ``$PROCSUP_START_METHOD`` overrides that.

    The other worker options (``max_jobs``, ``shutdown_timeout``,
    ``ping_interval``, ``ping_timeout``, ``memory_warn_mb``,
    ``memory_limit_mb``, ``memory_interval``, ``recycle_above_mb``, ``cancel_grace``,
    ``max_message_bytes``, ``shm_min_bytes``, ``preload``, ``name``, ``capture_output``,
    ``worker_loop``) are as for :func:`open_worker`, and apply to every worker; so does ``env``,
    whose callable form is given each worker's slot.

    The reference's option tables give each default and unit; a test keeps
    them, this signature and the options classes agreeing.

    Leaving the block (normally, by an exception or by cancellation) wakes
    waiters with :class:`PoolClosedError`, stops busy workers within their
    ``shutdown_timeout``, kills warming ones, and reaps every child.
    """
    arguments = locals()
    options = pick(PoolOptions, arguments)
    wopts = WorkerOptions.from_arguments(arguments, pool=True)
    ensure_descriptors(max(options.idle, options.max_workers or 0), options.start_slots)
    learned = LearnedModules() if options.learn_modules else None
    async with open_spawner(wopts, learned) as spawner:
        start_worker = functools.partial(supervise, wopts, spawner, learned=learned)
        async with Pool._open(options, start_worker, wopts.name or "") as pool:
            yield pool
