"""The warm pool.

Ownership and waking, by construction:

* Every child is owned by one task in the pool's service nursery (its
  *lifetime* task). The task takes a start slot, warms the worker under its
  init deadline, gives the slot back, offers the worker, and holds it until
  it is retired or dies; leaving the task for any reason kills and reaps it.
* The registry (``Pool._members``) owns the workers; the ready channel only
  carries them to acquirers, and a stale entry (a worker that died while
  queued) is skipped on receipt.
* An acquirer waits on the ready channel inside a child of ``_settled``, a
  MultiCancelScope cancelled whenever a start fails (and on close). A woken
  acquirer uses up an attempt only when every start that was in flight when
  its attempt began has settled, then starts another: it never waits on a
  start that cannot come, and never burns attempts while a peer start may
  still succeed.
* Nothing is held across a job: a start slot is held only while warming.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager, nullcontext
from typing import Any, TypeVar

import attrs
import trio
from tricycle import MultiCancelScope, open_service_nursery

from ._backoff import backoff_delay
from ._errors import (
    NoWorkerAvailableError,
    PoolClosedError,
    WorkerCrashedError,
    WorkerStartError,
)
from ._events import EVENT_LEVELS, PoolEvent
from ._limits import ensure_descriptors
from ._load import idle_target
from ._options import WorkerOptions, _count, _number, default_start_method
from ._spawn import Spawner
from ._util import collapse_single_group
from ._worker import Worker, open_spawner, supervise

__all__ = ["Pool", "PoolOptions", "PoolStatistics", "open_pool"]

T = TypeVar("T")
logger = logging.getLogger("procsup.pool")

WARMING, IDLE, BUSY, CLOSING, GONE = "warming", "idle", "busy", "closing", "gone"
_EVENT_BUFFER = 1024


@attrs.frozen(kw_only=True)
class PoolOptions:
    """Settings of a pool; see :func:`procsup.open_pool`."""

    idle: int = attrs.field(default=4, validator=_count(0))
    max_workers: int | None = attrs.field(default=None, validator=_count(1, allow_none=True))
    max_concurrent_starts: int | None = attrs.field(
        default=None, validator=_count(1, allow_none=True)
    )
    max_acquire_attempts: int = attrs.field(default=3, validator=_count(1))
    acquire_timeout: float | None = attrs.field(default=None, validator=_number(0, allow_none=True))
    load: Callable[[], float] | None = None
    load_threshold: float = attrs.field(default=0.7, validator=_number(0))
    load_interval: float = attrs.field(default=1.0, validator=_number(0))
    backoff_base: float = attrs.field(default=0.1, validator=_number(0))
    backoff_cap: float = attrs.field(default=30.0, validator=_number(0))
    on_event: Callable[[PoolEvent], object] | None = None

    def __attrs_post_init__(self) -> None:
        if self.load is not None and not callable(self.load):
            raise TypeError(f"load must be a callable returning 0.0 to 1.0, got {self.load!r}")
        if self.on_event is not None and not callable(self.on_event):
            raise TypeError(f"on_event must be callable, got {self.on_event!r}")
        if self.load_threshold > 1.0:
            raise ValueError(f"load_threshold must be in (0, 1], got {self.load_threshold!r}")
        if self.max_workers is not None and self.idle > self.max_workers:
            # wait_warm() would wait forever for an idle count it cannot reach
            raise ValueError(
                f"idle={self.idle} is more than max_workers={self.max_workers}: "
                "the pool could never keep that many warm"
            )

    @property
    def start_slots(self) -> int:
        return self.max_concurrent_starts or max(1, os.cpu_count() or 1)


@attrs.frozen
class PoolStatistics:
    """A snapshot of a pool's bookkeeping (:meth:`Pool.statistics`).

    Attributes:
        idle: warm workers waiting for a job.
        warming: starts in flight (spawning, initializing, or queued for a
            start slot).
        busy: workers handed to a caller.
        closing: workers being stopped and reaped.
        waiting: acquirers waiting for a worker.
        target_idle: the idle target at the current load.
        load: the current load, 0.0 to 1.0.
        starts: child processes started so far.
        start_failures: starts that failed so far.
        consecutive_start_failures: failures since the last success.
        health: ``"ok"``, or ``"degraded"`` while starts keep failing.
        last_start_error: the newest start failure, or ``None``.
        jobs_completed: jobs run through the pool that returned or raised.
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

    @property
    def live(self) -> int:
        """Child processes that exist: idle + warming + busy + closing."""
        return self.idle + self.warming + self.busy + self.closing


class _Member:
    """The registry's record of one child and its state in the pool."""

    __slots__ = ("retire_scope", "seq", "slot", "state", "worker")

    def __init__(self, seq: int, slot: int) -> None:
        self.seq = seq
        self.slot = slot  # held from the start until the process is reaped
        self.state = GONE  # not counted until the pool sets it
        self.worker: Worker | None = None
        self.retire_scope = trio.CancelScope()


class _StartSlots:
    """At most ``size`` starts warm at once; the others queue, first come
    first served. Unlike a semaphore, the set of starts holding a slot is
    known the moment a slot changes hands: an acquirer's attempt depends on
    exactly those."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._queued: dict[int, trio.Event] = {}  # in arrival order: each one's wakeup
        self.holders: set[int] = set()

    def request(self, seq: int) -> None:
        """Take a slot for start ``seq`` now, or queue it."""
        if self._free > 0:
            self._free -= 1
            self.holders.add(seq)
        else:
            self._queued[seq] = trio.Event()

    async def wait(self, seq: int) -> None:
        """Until queued start ``seq`` holds a slot."""
        event = self._queued.get(seq)
        if event is not None:
            await event.wait()

    def release(self, seq: int) -> None:
        """Start ``seq`` settled (or gave up): its slot, or its place in the
        queue, goes to the next. Idempotent."""
        if self._queued.pop(seq, None) is not None or seq not in self.holders:
            return
        self.holders.discard(seq)
        if self._queued:
            successor = next(iter(self._queued))
            self.holders.add(successor)
            self._queued.pop(successor).set()
        else:
            self._free += 1


class PooledWorker:
    """A warm worker lent by :meth:`Pool.acquire`, valid inside its block."""

    def __init__(self, pool: Pool, member: _Member, worker: Worker) -> None:
        self._pool = pool
        self._member = member
        self._worker = worker
        self._released = False

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self._worker.pid

    @property
    def worker(self) -> Worker:
        """The underlying :class:`Worker`."""
        return self._worker

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run one job; see :meth:`Worker.run`."""
        if self._released:
            raise RuntimeError("this worker was given back to the pool; acquire another")
        return await self._pool._run_on(self._worker, fn, args)


class Pool:
    """A pool of pre-warmed workers. Made by :func:`open_pool`."""

    def __init__(
        self,
        options: PoolOptions,
        worker_options: WorkerOptions,
        spawner: Spawner,
        nursery: trio.Nursery,
    ) -> None:
        self._options = options
        self._worker_options = worker_options
        self._spawner = spawner
        self._nursery = nursery
        self._closed = False
        self._members: dict[int, _Member] = {}
        self._slots: set[int] = set()  # the members' slots (procsup.worker_slot)
        self._counts: Counter[str] = Counter()
        self._seq = itertools.count(1)
        self._in_flight: set[int] = set()  # starts not yet settled
        self._ready_send, self._ready_recv = trio.open_memory_channel[_Member](math.inf)
        self._settled = MultiCancelScope()
        self._start_slots = _StartSlots(options.start_slots)
        self._waiting = 0
        self._starts = 0
        self._start_failures = 0
        self._start_successes = 0
        self._consecutive_failures = 0
        self._last_start_error: BaseException | None = None
        self._backoff_until = -math.inf
        self._timers_changed = trio.Event()
        self._polled_load = 0.0
        self._jobs_completed = 0
        self._subscribers: list[trio.MemorySendChannel[PoolEvent]] = []
        self._rng = random.Random()
        self._changed_event: trio.Event | None = None  # made when someone waits

    # -- public --------------------------------------------------------------

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in a warm worker and return its result.

        A worker found dead before the job was sent is replaced silently;
        once the job is sent, every outcome (result, the job's exception, a
        crash, a timeout) is the caller's. Raises what :meth:`acquire` and
        :meth:`Worker.run` raise.
        """
        if not callable(fn):  # before a worker is started for it
            raise TypeError(f"job must be callable, got {fn!r}")
        while True:
            async with self.acquire() as worker:
                try:
                    return await worker.run(fn, *args)
                except WorkerCrashedError as exc:
                    if exc.phase != "idle":
                        raise
            # died between being offered and receiving the job: try another

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
        member, worker = await self._acquire()
        lease = PooledWorker(self, member, worker)
        try:
            yield lease
        finally:
            lease._released = True
            self._release(member)

    async def wait_warm(self) -> None:
        """Wait until the idle target is met.

        Raises:
            NoWorkerAvailableError: starts keep failing (``max_acquire_attempts``
                consecutive failures); carries the last error.
            PoolClosedError: the pool closed.
        """
        while True:
            self._check_open()
            stats = self.statistics()
            if stats.idle >= stats.target_idle:
                return
            if self._consecutive_failures >= self._options.max_acquire_attempts:
                raise NoWorkerAvailableError(
                    f"the pool could not warm: {self._consecutive_failures} starts failed in a row",
                    [self._last_start_error] if self._last_start_error else [],
                )
            await self._changed().wait()

    def statistics(self) -> PoolStatistics:
        """A consistent snapshot of the pool's counts and health."""
        counts = self._counts
        return PoolStatistics(
            idle=counts[IDLE],
            warming=counts[WARMING],
            busy=counts[BUSY],
            closing=counts[CLOSING],
            waiting=self._waiting,
            target_idle=self._target_idle(),
            load=self._load(),
            starts=self._starts,
            start_failures=self._start_failures,
            consecutive_start_failures=self._consecutive_failures,
            health="degraded" if self._consecutive_failures else "ok",
            last_start_error=self._last_start_error,
            jobs_completed=self._jobs_completed,
        )

    @asynccontextmanager
    async def events(
        self, buffer: int = _EVENT_BUFFER
    ) -> AsyncIterator[trio.MemoryReceiveChannel[PoolEvent]]:
        """Subscribe to lifecycle events: ``async with pool.events() as events:
        async for event in events: ...``.

        The subscription never slows the pool: past ``buffer`` undelivered
        events, new ones are dropped for this subscriber.
        """
        send, receive = trio.open_memory_channel[PoolEvent](buffer)
        self._subscribers.append(send)
        try:
            yield receive
        finally:
            self._subscribers.remove(send)  # first: the pool must not send to a closed one
            send.close()
            receive.close()

    @property
    def closed(self) -> bool:
        """True once the pool's ``async with`` block has started to exit."""
        return self._closed

    # -- acquisition -----------------------------------------------------------

    async def _acquire(self) -> tuple[_Member, Worker]:
        self._check_open()
        timeout = self._options.acquire_timeout
        errors: list[BaseException] = []
        with trio.move_on_after(timeout) if timeout is not None else nullcontext():
            attempts = 0
            while True:
                got = await self._wait_one_attempt()
                if got is not None:
                    # A replacement starts warming now; not from _claim, where
                    # the claimer still counts as waiting (one start too many).
                    self._rebalance()
                    return got
                attempts += 1
                if self._last_start_error is not None:
                    errors.append(self._last_start_error)
                if attempts >= self._options.max_acquire_attempts:
                    raise NoWorkerAvailableError(
                        f"no worker after {attempts} attempts (max_acquire_attempts="
                        f"{self._options.max_acquire_attempts})",
                        errors,
                    )
        raise NoWorkerAvailableError(f"no worker within acquire_timeout={timeout:g}s", errors)

    async def _wait_one_attempt(self) -> tuple[_Member, Worker] | None:
        """Wait until a worker arrives (returned), or until a start failed and
        no start this attempt depends on is still in flight (None)."""
        got = self._take_ready()
        if got is not None:
            return got
        self._waiting += 1
        failures_before = self._start_failures
        successes_before = self._start_successes
        try:
            self._rebalance()
            pending = self._depended_on()
            while True:
                got = self._take_ready()
                if got is not None:
                    return got
                member = None
                with self._settled.open_child():
                    member = await self._ready_recv.receive()
                self._check_open()
                if member is not None:
                    got = self._claim(member)
                    if got is not None:
                        return got
                    continue  # a stale entry
                if pending & self._in_flight:
                    continue  # a start we depend on may still succeed
                if self._start_failures > failures_before:
                    if self._start_successes == successes_before:
                        return None  # every start that settled meanwhile failed
                    # Starts also succeeded (and served the waiters ahead of
                    # us): contention, not a failed round; watch the next one.
                    failures_before = self._start_failures
                    successes_before = self._start_successes
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
        return member, worker

    def _release(self, member: _Member) -> None:
        worker = member.worker
        if member.state != BUSY:
            return
        if self._closed or worker is None or not worker.accepting_jobs:
            self._set_state(member, CLOSING)
            member.retire_scope.cancel()
        else:
            self._set_state(member, IDLE)
            self._ready_send.send_nowait(member)
        self._rebalance()

    async def _run_on(self, worker: Worker, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        pid = worker.pid
        self._emit("job_started", pid)
        try:
            result = await worker.run(fn, *args)
        except BaseException as exc:
            self._jobs_completed += 1
            self._emit("job_finished", pid, error=exc)
            raise
        self._jobs_completed += 1
        self._emit("job_finished", pid)
        return result

    # -- warming ---------------------------------------------------------------

    def _rebalance(self) -> None:
        """Start what is missing: one start per waiter not covered by a start
        in flight, at once; then starts towards the idle target, unless
        backing off after failures (then one probe at a time)."""
        if self._closed:
            return
        counts = self._counts
        capacity = math.inf
        if self._options.max_workers is not None:
            capacity = self._options.max_workers - sum(counts.values())
        for_waiters = self._waiting - counts[WARMING] - counts[IDLE]
        for_target = self._target_idle() - counts[IDLE] - max(counts[WARMING] - self._waiting, 0)
        if self._consecutive_failures:
            for_target = min(for_target, 1 - counts[WARMING])
            if trio.current_time() < self._backoff_until:
                for_target = 0
        wanted = max(for_waiters, 0) + max(for_target, 0)
        for _ in range(int(min(wanted, capacity))):
            self._start_one()

    def _start_one(self) -> None:
        slot = next(i for i in itertools.count() if i not in self._slots)  # the lowest free
        self._slots.add(slot)
        member = _Member(next(self._seq), slot)
        self._members[member.seq] = member
        self._in_flight.add(member.seq)
        self._set_state(member, WARMING)
        self._start_slots.request(member.seq)
        self._nursery.start_soon(self._lifetime, member, name=f"procsup-worker-{member.seq}")

    async def _lifetime(self, member: _Member) -> None:
        """Own one child from spawn to reap."""
        try:
            async with AsyncExitStack() as stack:
                await self._start_slots.wait(member.seq)
                try:
                    worker = await stack.enter_async_context(
                        supervise(self._worker_options, self._spawner, self._spawned, member.slot)
                    )
                except WorkerStartError as exc:
                    self._start_failed(member, exc)
                    return
                self._start_slots.release(member.seq)
                self._ready(member, worker)
                with member.retire_scope:
                    await worker.wait_exited()
                if member.state == IDLE:
                    self._set_state(member, CLOSING)
        finally:
            self._start_slots.release(member.seq)
            self._gone(member)

    def _spawned(self, pid: int) -> None:
        self._starts += 1  # a process exists (a failed spawn is only a start failure)
        self._emit("start", pid)

    def _ready(self, member: _Member, worker: Worker) -> None:
        member.worker = worker
        self._in_flight.discard(member.seq)
        self._start_successes += 1
        self._consecutive_failures = 0
        self._backoff_until = -math.inf
        self._set_state(member, IDLE)
        self._emit("ready", worker.pid)
        self._ready_send.send_nowait(member)

    def _start_failed(self, member: _Member, exc: WorkerStartError) -> None:
        self._in_flight.discard(member.seq)
        self._start_failures += 1
        self._consecutive_failures += 1
        self._last_start_error = exc
        delay = backoff_delay(
            self._consecutive_failures,
            base=self._options.backoff_base,
            cap=self._options.backoff_cap,
            jitter=self._rng.random(),
        )
        self._backoff_until = trio.current_time() + delay
        self._timers_changed.set()
        self._emit("start_failed", exc.pid, error=exc)
        self._wake_waiters()

    def _gone(self, member: _Member) -> None:
        self._in_flight.discard(member.seq)
        self._set_state(member, GONE)
        del self._members[member.seq]
        self._slots.discard(member.slot)
        worker = member.worker
        if worker is not None:
            self._emit("exited", worker.pid, returncode=worker.returncode)
        self._rebalance()

    def _wake_waiters(self) -> None:
        self._settled.cancel()
        self._settled = MultiCancelScope()

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
            self._rebalance()
            due = next_poll if self._options.load is not None else math.inf
            if self._backoff_until > now:
                due = min(due, self._backoff_until)
            self._timers_changed = trio.Event()
            with trio.move_on_at(due):
                await self._timers_changed.wait()

    # -- bookkeeping -------------------------------------------------------------

    def _set_state(self, member: _Member, state: str) -> None:
        if member.state != GONE:
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

    def _emit(
        self,
        kind: str,
        pid: int | None,
        *,
        returncode: int | None = None,
        error: BaseException | None = None,
    ) -> None:
        level = EVENT_LEVELS[kind]
        log = logger.isEnabledFor(level)
        if not (log or self._subscribers or self._options.on_event is not None):
            return  # nobody listens: a one-shot worker has five events
        event = PoolEvent(kind, pid, trio.current_time(), returncode, error)
        if log:
            logger.log(level, "%s", event.describe())
        if self._options.on_event is not None:
            try:
                self._options.on_event(event)
            except Exception:
                logger.exception("on_event callback raised; ignored")
        for channel in self._subscribers:
            try:
                channel.send_nowait(event)
            except (trio.WouldBlock, trio.BrokenResourceError):  # full, or leaving events()
                pass

    def _close(self) -> None:
        self._closed = True
        self._wake_waiters()
        for member in list(self._members.values()):
            if member.state == IDLE:
                self._set_state(member, CLOSING)
            member.retire_scope.cancel()
        self._notify_changed()


@asynccontextmanager
async def open_pool(
    initializer: Callable[[], Any] | str | None = None,
    *,
    idle: int = 4,
    max_workers: int | None = None,
    init_timeout: float = 10.0,
    max_concurrent_starts: int | None = None,
    max_acquire_attempts: int = 3,
    acquire_timeout: float | None = None,
    load: Callable[[], float] | None = None,
    load_threshold: float = 0.7,
    **worker_options: Any,
) -> AsyncIterator[Pool]:
    """Open a pool that keeps ``idle`` workers warm; returns at once.

    Args:
        initializer: run once in each worker (see :func:`open_worker`).
        idle: warm workers to keep at zero load.
        max_workers: cap on live children (idle + warming + busy + closing);
            acquirers beyond it wait in FIFO order. ``None``: no cap.
        init_timeout: seconds a start may take, counted from when it gets a
            start slot (not while queued for one).
        max_concurrent_starts: workers warming at once (default: CPU count).
        max_acquire_attempts: failed start rounds an acquirer sits through
            before :class:`NoWorkerAvailableError`.
        acquire_timeout: seconds an acquirer may wait in all; ``None``: no
            limit beyond the attempts.
        load: callable returning the load, 0.0 to 1.0, polled every
            ``load_interval`` seconds; default ``busy / max_workers`` when
            ``max_workers`` is set, else 0.
        load_threshold: the load at which the idle target reaches 0.
        **worker_options: any :func:`open_worker` option (``max_jobs``,
            ``shutdown_timeout``, ``memory_limit_mb``...; ``start_method``
            defaults to ``"forkserver"`` on Linux, ``"exec"`` elsewhere, and
            ``$PROCSUP_START_METHOD`` overrides it), plus pool options
            ``load_interval`` (1.0 s), ``backoff_base`` (0.1 s),
            ``backoff_cap`` (30 s) and ``on_event`` (a callback given every
            :class:`PoolEvent`).

    Leaving the block (normally, by an exception or by cancellation) wakes
    waiters with :class:`PoolClosedError`, stops busy workers within their
    ``shutdown_timeout``, kills warming ones, and reaps every child.
    """
    pool_keys = {"load_interval", "backoff_base", "backoff_cap", "on_event"}
    pool_extra = {k: worker_options.pop(k) for k in list(worker_options) if k in pool_keys}
    options = PoolOptions(
        idle=idle,
        max_workers=max_workers,
        max_concurrent_starts=max_concurrent_starts,
        max_acquire_attempts=max_acquire_attempts,
        acquire_timeout=acquire_timeout,
        load=load,
        load_threshold=load_threshold,
        **pool_extra,
    )
    worker_options.setdefault("start_method", default_start_method(pool=True))
    wopts = WorkerOptions(initializer=initializer, init_timeout=init_timeout, **worker_options)
    ensure_descriptors(max(idle, max_workers or 0), options.start_slots)
    async with open_spawner(wopts) as spawner:
        with collapse_single_group():
            async with open_service_nursery() as nursery:
                pool = Pool(options, wopts, spawner, nursery)
                if options.load is not None:
                    pool._polled_load = pool._call_load()
                pool._rebalance()  # warming starts now, not at the keeper's first turn
                nursery.start_soon(pool._keep_warm)
                try:
                    yield pool
                finally:
                    pool._close()
                    nursery.cancel_scope.cancel()
