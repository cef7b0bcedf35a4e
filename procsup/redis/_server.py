"""The host's side: :func:`open_server` consumes a queue with a pool."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import socket
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from .. import __version__
from .._backoff import backoff_delay
from .._errors import (
    JobTimeoutError,
    NoWorkerAvailableError,
    PoolClosedError,
    RemoteError,
    WorkerCrashedError,
    WorkerError,
)
from ._engine import ConnectionLost, Engine, Entry, RedisFailure, open_engine
from ._errors import DEFAULT_MAX_BODY_BYTES, error_fields

__all__ = ["COUNTERS", "ServeStatistics", "Server", "open_server"]

log = logging.getLogger("procsup.redis")

_BLOCK = 2.0  # seconds one blocking read waits for new entries
_HAND_BACK_TIMEOUT = 5.0  # seconds, at a hard stop, to hand back what is held
_RECONNECT_BASE, _RECONNECT_CAP = 0.1, 30.0  # seconds: the reconnect backoff
_GC_EVERY = 300.0  # seconds between passes that forget long-gone consumers
_GC_IDLE = 3600.0  # seconds a consumer with nothing pending must be idle to be forgotten


@attrs.frozen
class ServeStatistics:
    """A snapshot of one host's queue work (:meth:`Server.statistics`).

    Attributes:
        consumer: this host's consumer name in the group (``host:pid:random``).
        health: ``"ok"``; ``"degraded"`` while Redis is unreachable or the
            pool's starts keep failing; ``"draining"``.
        connected: whether the last Redis call succeeded.
        capacity: the pool's ``max_workers``.
        in_hand: entries taken and not finished (running or waiting for a worker).
        received: entries taken as new deliveries.
        reclaimed: entries taken back from hosts that stopped renewing.
        completed: jobs finished with a result (value or final error).
        failed: of those, the ones whose result is an error.
        released: jobs handed back to the queue (worker crash, drain, no worker).
        dead_lettered: jobs moved to the dead-letter stream.
        expired: jobs that passed their ``ttl`` before they ran.
        lease_lost: jobs taken over by another host while this one ran them.
        completion_lost: outcomes dropped because the lease was gone by then.
        redis_errors: Redis calls that failed (the host retried them).
    """

    consumer: str
    health: str
    connected: bool
    capacity: int
    in_hand: int
    received: int
    reclaimed: int
    completed: int
    failed: int
    released: int
    dead_lettered: int
    expired: int
    lease_lost: int
    completion_lost: int
    redis_errors: int


COUNTERS = [f.name for f in attrs.fields(ServeStatistics)][5:]


class _Job:
    """One entry in hand. ``scope`` stops it; ``lost`` says another host has it."""

    def __init__(self, entry: Entry) -> None:
        self.entry = entry
        self.scope = trio.CancelScope()
        self.started = False  # a worker was acquired for it
        self.started_at: float | None = None  # trio time the (last) worker was acquired
        self.lost = False


@attrs.frozen
class _Outcome:
    """What to tell the queue about a finished delivery."""

    action: str  # "complete", "release" or "dead"
    payload: str = ""  # the result record (complete, dead)
    counted: bool = True  # release: whether this delivery counts
    reason: str = ""  # dead: why
    error: str = ""  # release, dead: the last error (JSON)
    failed: bool = False  # complete: the result is an error


class Server:
    """One host consuming a queue with a pool. Made by :func:`open_server`.

    Invariants: every entry this host holds is in ``_held`` from the moment it
    is read or claimed until its outcome is settled with Redis (or it is lost);
    ``len(_held) <= capacity``.
    """

    def __init__(
        self,
        pool: Any,
        fn: Callable[[Any], Any],
        engine: Engine,
        *,
        lease: float,
        max_deliveries: int,
        timeout: float | None,
        retry_on: tuple[type[BaseException], ...],
        drain_timeout: float,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self._pool = pool
        self._fn = fn
        self._engine = engine
        self._lease = lease
        self._max_deliveries = max_deliveries
        self._timeout = timeout
        self._retry_on = retry_on
        self._drain_timeout = drain_timeout
        self._max_body_bytes = max_body_bytes
        self._capacity, self._prewarmed, self._load_threshold = _pool_limits(pool)
        self._held: dict[str, _Job] = {}
        self._counts: Counter[str] = Counter()
        self._wake = trio.Event()
        self._intake = trio.CancelScope()  # the reader (it reclaims too) and the GC
        self._draining = False
        self._drained = trio.Event()
        self._connected = True
        self._failures = 0  # consecutive failed Redis calls
        self._reclaim_after = trio.current_time() + lease  # startup grace (design 4.5)
        self._server_offset_ms = 0.0  # server clock minus trio clock, ms
        self._started = trio.current_time()
        self._rng = random.Random()
        self._jobs: trio.Nursery | None = None
        # called with (name, seconds) for queue_wait, run and end_to_end:
        # an exporter's histograms (export_host); empty, nothing is timed
        self._timings: list[Callable[[str, float], None]] = []

    # -- public --------------------------------------------------------------

    @property
    def consumer(self) -> str:
        """This host's consumer name in the group."""
        return self._engine.consumer

    def statistics(self) -> ServeStatistics:
        """A consistent snapshot of this host's counts and health."""
        return ServeStatistics(
            consumer=self.consumer,
            health=self._health(),
            connected=self._connected,
            capacity=self._capacity,
            in_hand=len(self._held),
            **{name: self._counts[name] for name in COUNTERS},
        )

    async def drain(self) -> None:
        """Stop taking jobs, let those in hand finish for up to ``drain_timeout``
        seconds, then stop the rest and hand them back to the queue uncounted
        (another host takes them at once). Returns when nothing is held."""
        if not self._draining:
            self._draining = True
            self._intake.cancel()
            with trio.move_on_after(self._drain_timeout):
                while self._held:
                    await self._changed()
            for job in list(self._held.values()):
                job.scope.cancel()  # each hands itself back
            with trio.move_on_after(_HAND_BACK_TIMEOUT):
                while self._held:
                    await self._changed()
                await self._hand_back_pending()
            self._drained.set()
        await self._drained.wait()

    # -- the loops -------------------------------------------------------------

    async def _run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._jobs = nursery
            nursery.start_soon(self._renewer)
            nursery.start_soon(self._watch_pool)
            task_status.started()
            with self._intake:
                async with trio.open_nursery() as intake:
                    intake.start_soon(self._reader)
                    intake.start_soon(self._collect_garbage)
            await self._drained.wait()
            nursery.cancel_scope.cancel()

    async def _reader(self) -> None:
        # The one task that takes entries, new (fetch) or reclaimed: two
        # takers would each ask for the same free slots and together hold
        # more than the capacity. A blocking read ends by the next reclaim pass.
        next_reclaim = trio.current_time() + self._lease / 2
        while True:
            wake = self._wake
            n = self._room()
            if n == 0:
                await wake.wait()
                continue
            now = trio.current_time()
            if now >= next_reclaim:
                next_reclaim = now + self._lease / 2
                if now >= self._reclaim_after:
                    await self._reclaim(n)
                    continue
            try:
                entries = await self._engine.fetch(n, min(_BLOCK, next_reclaim - now))
            except RedisFailure as exc:
                await self._down("read", exc)
                continue
            self._up()
            for entry in entries:
                self._take(entry, "received")

    async def _reclaim(self, n: int) -> None:
        try:
            entries = await self._engine.reclaim(n, self._lease, self._max_deliveries)
        except RedisFailure as exc:
            await self._down("reclaim", exc)
            return
        self._up()
        for entry in entries:
            if entry.entry not in self._held:  # ours already: its renewals failed
                self._take(entry, "reclaimed")

    async def _collect_garbage(self) -> None:
        while True:
            await trio.sleep(_GC_EVERY)
            with contextlib.suppress(*RedisFailure):
                await self._engine.collect_garbage(max(_GC_IDLE, 10 * self._lease))

    async def _renewer(self) -> None:
        while True:
            before = trio.current_time()
            try:
                now_ms, lost = await self._engine.renew(list(self._held), self._status())
            except RedisFailure as exc:
                await self._down("renew", exc)
                continue  # renew first when the server is back
            self._server_offset_ms = now_ms - (before + trio.current_time()) * 500
            self._up()
            for entry in lost:
                job = self._held.get(entry)
                if job is not None and not job.lost:
                    log.warning("lease lost: job %s now runs on another host", job.entry.job_id)
                    job.lost = True
                    self._counts["lease_lost"] += 1
                    job.scope.cancel()
            await trio.sleep(self._lease / 3)

    async def _watch_pool(self) -> None:
        # ADAPTER: pool events are today's way to hear that capacity changed.
        async with self._pool.events() as events:
            async for _ in events:
                self._nudge()

    # -- capacity --------------------------------------------------------------

    def _room(self) -> int:
        """Entries to ask for now: only as many as can start at once (design 4.6)."""
        if self._draining or not self._connected:
            return 0  # the renewer notices the server is back, and wakes the reader
        stats = self._pool.statistics()
        if stats.health != "ok" or stats.load >= self._load_threshold:
            return 0
        free = self._capacity - len(self._held)
        if self._prewarmed:
            unstarted = sum(not job.started for job in self._held.values())
            free = min(free, stats.idle - unstarted)
        return max(0, free)

    def _take(self, entry: Entry, source: str) -> None:
        assert self._jobs is not None
        job = _Job(entry)
        self._held[entry.entry] = job
        self._counts[source] += 1
        self._jobs.start_soon(self._job, job)

    def _nudge(self) -> None:
        self._wake.set()
        self._wake = trio.Event()

    async def _changed(self) -> None:
        await self._wake.wait()

    # -- one job ---------------------------------------------------------------

    async def _job(self, job: _Job) -> None:
        try:
            outcome: _Outcome | None = None
            with job.scope:
                outcome = await self._execute(job)
            if job.lost:
                return  # another host runs it; anything we publish would be dropped
            if outcome is None:  # stopped by a drain or a hard stop: not the job's fault
                outcome = _Outcome("release", counted=False)
            await self._settle(job, outcome)
        finally:
            del self._held[job.entry.entry]
            self._nudge()

    async def _execute(self, job: _Job) -> _Outcome:
        entry = job.entry
        if entry.body is not None and (size := len(entry.body.encode())) > self._max_body_bytes:
            message = (
                f"the body is {size:,} bytes, over this host's max_body_bytes "
                f"{self._max_body_bytes:,}; it was not run"
            )
            return self._dead(
                entry, error_fields("BodyTooLargeError", message, "input"), "too_large"
            )
        try:
            arg = json.loads(entry.body) if entry.body is not None else _MISSING
        except ValueError as exc:
            arg, reason = _MISSING, f"the body is not JSON: {exc}"
        else:
            reason = "the entry has no body field"
        if arg is _MISSING:
            return self._dead(entry, error_fields("DecodeError", reason, "input"), "decode_error")
        if entry.expires_ms is not None and self._server_ms() > entry.expires_ms:
            self._counts["expired"] += 1
            error = error_fields(
                "ExpiredError", "the job passed its ttl before it could run", "queue"
            )
            return self._final(entry, error=error)
        try:
            value = await _run_in_pool(self._pool, self._fn, arg, self._timeout, job)
        except JobTimeoutError:
            error = error_fields(
                "TimeoutError",
                f"the job did not finish within timeout {self._timeout:g}s; its worker was stopped",
                "job",
            )
            return self._final(entry, error=error)
        except (NoWorkerAvailableError, PoolClosedError) as exc:
            # a host problem, not the job's: hand it back uncounted
            return _Outcome("release", counted=False, error=json.dumps(_fields(exc)))
        except WorkerError as exc:  # crashed, memory limit, unresponsive
            return self._retry(entry, exc, "worker_crashed")
        except Exception as exc:  # noqa: BLE001 -- the job's own exception is its result
            if self._retryable(exc):
                return self._retry(entry, exc, "retries_exhausted")
            return self._final(entry, error=_fields(exc))
        finally:
            self._time_run(job)
        try:
            return self._final(entry, result=value)
        except (TypeError, ValueError) as exc:
            error = error_fields(
                type(exc).__name__, f"the result cannot be written as JSON: {exc}", "output"
            )
            return self._final(entry, error=error)

    def _retry(self, entry: Entry, exc: BaseException, reason: str) -> _Outcome:
        error = _fields(exc)
        if entry.deliveries >= self._max_deliveries:
            return self._dead(entry, error, reason)
        return _Outcome("release", counted=True, error=json.dumps(error))

    def _dead(self, entry: Entry, error: dict[str, Any], reason: str) -> _Outcome:
        """To the dead-letter stream, never run (again): ``reason``, ``error``."""
        record = self._record(entry, error=error)
        return _Outcome("dead", record, reason=reason, error=json.dumps(error))

    def _retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, self._retry_on):
            return True
        name = exc.type_name if isinstance(exc, RemoteError) else None
        return any(
            name in (t.__qualname__, f"{t.__module__}.{t.__qualname__}") for t in self._retry_on
        )

    def _final(self, entry: Entry, **outcome: Any) -> _Outcome:
        """A final result: ``result=value`` or ``error=fields``."""
        return _Outcome("complete", self._record(entry, **outcome), failed="error" in outcome)

    def _record(self, entry: Entry, **outcome: Any) -> str:
        """The job's result record; raises if the value is not JSON."""
        record = {
            "id": entry.job_id,
            **outcome,
            "deliveries": entry.deliveries,
            "host": self.consumer,
        }
        return json.dumps(record, allow_nan=False)

    async def _settle(self, job: _Job, outcome: _Outcome) -> None:
        """Tell Redis how the delivery ended, retrying through an outage."""
        engine, entry = self._engine, job.entry
        while True:
            try:
                if outcome.action == "complete":
                    done = await engine.complete(entry, outcome.payload)
                elif outcome.action == "release":
                    done = await engine.release(entry, counted=outcome.counted, error=outcome.error)
                else:
                    done = await engine.dead_letter(
                        entry, outcome.reason, outcome.error, outcome.payload
                    )
            except RedisFailure as exc:
                await self._down(outcome.action, exc)
                continue
            break
        self._up()
        if not done:
            self._counts["completion_lost"] += 1
            log.warning("job %s: its lease was lost; this outcome is dropped", entry.job_id)
        elif outcome.action == "complete":
            self._counts["completed"] += 1
            self._counts["failed"] += outcome.failed
            self._time("end_to_end", (self._server_ms() - _enqueued_ms(entry)) / 1000)
        elif outcome.action == "release":
            self._counts["released"] += 1
        else:
            self._counts["dead_lettered"] += 1

    def _time_run(self, job: _Job) -> None:
        """Time the job's wait in the queue (from its entry's enqueue, by the
        server's clock, to its worker) and its run (worker to outcome)."""
        if job.started_at is not None and self._timings:
            started_ms = job.started_at * 1000 + self._server_offset_ms
            self._time("queue_wait", (started_ms - _enqueued_ms(job.entry)) / 1000)
            self._time("run", trio.current_time() - job.started_at)

    def _time(self, name: str, seconds: float) -> None:
        for observe in self._timings:
            observe(name, max(0.0, seconds))

    async def _read_server_clock(self) -> None:
        """The server clock's offset, before the first read (renewals keep it)."""
        self._server_offset_ms = await self._engine.server_time_ms() - trio.current_time() * 1000

    async def _leave(self, engine: Engine) -> None:
        """Once every job task has ended: on ``engine`` (a fresh client), hand
        back what the server says this host still holds, and drop it from the
        host registry."""
        self._engine = engine
        await self._hand_back_pending()
        await self._forget()

    async def _hand_back_pending(self) -> None:
        """Hand back, uncounted, what the server says this host holds and it
        does not run: after a stop, and any entry that a cancelled or failed
        read delivered without our knowing."""
        try:
            for entry in await self._engine.own_pending():
                if entry not in self._held:
                    orphan = Entry(entry, entry, None, 1, None)
                    await self._engine.release(orphan, counted=False)
        except RedisFailure as exc:
            self._counts["redis_errors"] += 1
            log.warning("could not hand back orphaned entries: %s", exc)

    async def _forget(self) -> None:
        try:
            await self._engine.forget_host()
        except RedisFailure:
            pass

    # -- health ----------------------------------------------------------------

    async def _down(self, op: str, exc: BaseException) -> None:
        self._counts["redis_errors"] += 1
        self._failures += 1
        if self._connected:
            log.warning("Redis call failed (%s: %s); retrying with backoff", op, exc)
            self._connected = False
            await self._engine.connect()
        await trio.sleep(
            backoff_delay(
                self._failures,
                base=_RECONNECT_BASE,
                cap=min(_RECONNECT_CAP, self._lease / 3),
                jitter=self._rng.random(),
            )
        )

    def _up(self) -> None:
        self._failures = 0
        if not self._connected:
            log.warning("Redis reachable again")
            self._connected = True
            # idle times on the server include the outage: renew before reclaiming
            self._reclaim_after = trio.current_time() + self._lease
            self._nudge()

    def _health(self) -> str:
        if self._draining:
            return "draining"
        if not self._connected or self._pool.statistics().health != "ok":
            return "degraded"
        return "ok"

    def _status(self) -> dict[str, Any]:
        stats = self._pool.statistics()
        return {
            "load": stats.load,
            "idle": stats.idle,
            "warming": stats.warming,
            "busy": stats.busy,
            "capacity": self._capacity,
            "in_hand": len(self._held),
            "health": self._health(),
            "lease": self._lease,
            "version": __version__,
            "pid": os.getpid(),
        }

    def _server_ms(self) -> float:
        return trio.current_time() * 1000 + self._server_offset_ms


_MISSING = object()


def _enqueued_ms(entry: Entry) -> int:
    """When the entry was added, in server ms (its stream id's first part)."""
    return int(entry.entry.split("-", 1)[0])


def _fields(exc: BaseException) -> dict[str, Any]:
    from .._cli_common import error_fields as fields_of_exception

    return fields_of_exception(exc)


def _pool_limits(pool: Any) -> tuple[int, bool, float]:
    """``(capacity, prewarmed, load_threshold)`` of a pool.

    ADAPTER: read from the pool's options until the pool reports them itself.
    """
    options = pool._options
    if options.max_workers is None:
        raise ValueError(
            "open_server needs a pool with max_workers set: a host takes at most "
            "max_workers entries from the queue (open_pool(..., max_workers=N))"
        )
    return options.max_workers, options.idle > 0, options.load_threshold


async def _run_in_pool(
    pool: Any, fn: Callable[[Any], Any], arg: Any, job_timeout: float | None, job: _Job
) -> Any:
    """``fn(arg)`` in a warm worker, stopped after ``job_timeout`` s of running
    (:class:`~procsup.JobTimeoutError`); the job is marked started once it
    has a worker, and unmarked if that worker died before it was sent."""
    while True:
        async with pool.acquire() as worker:
            job.started, job.started_at = True, trio.current_time()
            try:
                return await worker.run(fn, arg, timeout=job_timeout)
            except WorkerCrashedError as exc:
                if exc.phase != "idle":
                    raise
        job.started = False  # died before the job was sent: another worker


def _consumer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@asynccontextmanager
async def open_server(
    pool: Any,
    fn: Callable[[Any], Any],
    *,
    url: str,
    queue: str,
    group: str = "procsup",
    lease: float = 30.0,
    max_deliveries: int = 3,
    timeout: float | None = None,  # noqa: ASYNC109 -- the job's limit, pinned by issue 15
    retry_on: tuple[type[BaseException], ...] = (),
    drain_timeout: float = 300.0,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> AsyncIterator[Server]:
    """Consume ``queue`` with ``pool``: each job calls ``fn`` with its argument.

    Jobs are taken only as the pool can start them (warm, free workers, load
    below the pool's ``load_threshold``; never more than ``max_workers`` in
    hand). Leaving the block normally drains (:meth:`Server.drain`); a
    cancellation stops the jobs in hand and hands them back uncounted.

    Args:
        pool: an open :class:`~procsup.Pool` with ``max_workers`` set.
        fn: the function every job calls (fixed here, never named by a message).
        url: the Redis server (``redis://``, ``rediss://`` or ``unix://`` URL).
        queue: the queue's name.
        group: the consumer group: hosts of one service share it.
        lease: seconds a host may go without renewing before another host
            takes its jobs; renewed every ``lease / 3``.
        max_deliveries: deliveries after which a job whose worker crashes (or
            whose host dies, or which raises a ``retry_on`` type) goes to the
            dead-letter stream instead of running again.
        timeout: seconds a job may run; then its worker is stopped and the
            job's result is a ``TimeoutError``. None: no limit.
        retry_on: exception types after which a job runs again (counted)
            instead of failing; any other exception is the job's final result.
        drain_timeout: seconds :meth:`Server.drain` waits for running jobs.
        max_body_bytes: an entry whose body is larger (bytes) goes to the
            dead-letter stream (``too_large``) without running; producers
            through :func:`open_queue` are refused before that. Default 1 MiB.
    """
    if not lease > 0 or math.isinf(lease):
        raise ValueError(f"lease must be a number of seconds above 0, got {lease!r}")
    if max_deliveries < 1:
        raise ValueError(f"max_deliveries must be at least 1, got {max_deliveries!r}")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds above 0 or None, got {timeout!r}")
    if drain_timeout < 0:
        raise ValueError(f"drain_timeout must be 0 or more seconds, got {drain_timeout!r}")
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be at least 1, got {max_body_bytes!r}")
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}")
    async with open_engine(url, queue, group=group, consumer=_consumer_name()) as engine:
        failures = 0
        while True:  # a host may start before its server: wait for it
            try:
                for warning in await engine.prepare():
                    log.warning("%s", warning)
                break
            except ConnectionLost as exc:
                failures += 1
                log.warning("Redis unreachable at start (%s); retrying", exc)
                await trio.sleep(
                    backoff_delay(
                        failures, base=_RECONNECT_BASE, cap=_RECONNECT_CAP, jitter=random.random()
                    )
                )
        server = Server(
            pool,
            fn,
            engine,
            lease=lease,
            max_deliveries=max_deliveries,
            timeout=timeout,
            retry_on=tuple(retry_on),
            drain_timeout=drain_timeout,
            max_body_bytes=max_body_bytes,
        )
        await server._read_server_clock()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(server._run)
                try:
                    yield server
                    await server.drain()
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            # Every job task has ended: what is still ours goes back, uncounted.
            # A fresh client: a cancelled host's connections were cancelled too.
            with trio.CancelScope(shield=True), trio.move_on_after(_HAND_BACK_TIMEOUT):
                async with open_engine(url, queue, group=group, consumer=engine.consumer) as last:
                    await server._leave(last)
