"""``Pool.map``: one function over many inputs, in bounded memory.

How it runs: ``max_in_flight`` *lanes* (tasks of the map's own nursery),
each with one worker at a time, take inputs and send them to their worker:
alone (a JOB, as :meth:`Pool.run` does), or several at once in a BATCH
(:mod:`procsup._batch`), which the worker runs one after another and
answers one by one. A lane's batches grow from one job (doubling) up to
``MAX_BATCH`` jobs or ``BATCH_SECONDS`` of the jobs' measured time, so slow
or few jobs go one or two at a time and trivial ones hundreds at a time.
What a batch cannot carry goes alone: an input that pickles only with
cloudpickle or holds a large buffer (shared memory), a function that does
not pickle, a worker with a ``worker_loop`` or ``max_jobs=1``.

How it stays bounded, by construction:

* At most ``max_in_flight`` jobs run at once (one per lane), and at most
  ``read_ahead(max_in_flight, batch)`` inputs are between "pulled" and
  "yielded to the caller", ``batch`` being the largest batch the jobs'
  measured time allows (1 for jobs of ``BATCH_SECONDS`` or more, up to
  ``MAX_BATCH``): a lane pulls only while there is room, so a
  10-million-line generator is never read further ahead than that, ordered
  or not, and slow jobs read two inputs ahead per job in flight.
* A job that a worker never began (its process died first; the start mark
  says so) goes back to the front of the inputs, uncounted, and runs on
  another worker; a job it began is never run again.
* Every lane is a task of the map's nursery, inside the caller's ``async
  with``: leaving the block cancels the lanes, and the worker's cancellation
  (as for :meth:`Pool.run`) stops and reaps their workers before the block
  is left.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import trio

from ._batch import UNSTARTED, Batch, batch_payload, pickle_argument
from ._budget import _Budget
from ._child_core import has_large_buffer
from ._cpus import available_cpus
from ._errors import SerializationError
from ._options import check_timeout
from ._util import collapse_single_group
from ._wire import max_payload

if TYPE_CHECKING:
    from ._pool import Pool
    from ._worker import Worker

__all__ = ["MAX_BATCH", "MapResults", "open_map", "read_ahead"]

T = TypeVar("T")
_NOTHING: Any = object()

MAX_BATCH = 256  # jobs in one BATCH at most
BATCH_SECONDS = 0.02  # of measured job time in one batch at most (so a slow job goes alone)
TRIM_SECONDS = 0.05  # a batch's job runs at least this long before the rest is taken back
BATCH_BYTES = 1 << 20  # of pickled inputs in one batch at most
_FRAME_ROOM = 64  # a BATCH frame's own bytes, and more


def read_ahead(max_in_flight: int, batch: int = MAX_BATCH) -> int:
    """The most inputs a map holds between "pulled" and "yielded": two
    batches of ``batch`` inputs for each job in flight."""
    return 2 * batch * max_in_flight


class MapResults(Generic[T]):
    """The results of :meth:`Pool.map`, as an async iterator; valid inside its
    ``async with`` block. ``async for value in results`` gives the values;
    ``async for index, value in results.indexed()`` gives each with its
    input's index (counted from 0), which says which input an unordered
    result or a returned exception belongs to."""

    def __init__(self, *, ordered: bool) -> None:
        self._ordered = ordered
        # -- settled jobs not yet yielded: results (or, return_exceptions, errors)
        self._by_index: dict[int, Any] = {}  # ordered: waiting for earlier ones
        self._settled: collections.deque[tuple[int, Any]] = collections.deque()  # unordered
        self._next_index = 0  # ordered: the index to yield next
        # -- the end: set once each
        self._pulled: int | None = None  # inputs in all, once the iterable is exhausted
        self.yielded = 0
        self.room: trio.Event | None = None  # a lane waits for yielded to grow: set then
        self._failure: BaseException | None = None  # the first error, when it ends the map
        self._stopped = False  # every job and the feeder are done (after a failure)
        self._changed: trio.Event | None = None  # the consumer waits: set at a change above

    def __aiter__(self) -> MapResults[T]:
        return self

    async def __anext__(self) -> T:
        return (await self._next())[1]

    def indexed(self) -> AsyncIterator[tuple[int, T]]:
        """The same results as ``(input index, value)`` pairs."""
        return _Indexed(self)

    async def _next(self) -> tuple[int, T]:
        while True:
            if self._failure is not None:
                if self._stopped:
                    raise self._failure  # after every other job was cancelled and reaped
            elif (taken := self._take()) is not None:
                self.yielded += 1
                if self.room is not None:
                    self.room.set()
                    self.room = None
                return taken
            elif self._pulled is not None and self.yielded == self._pulled:
                raise StopAsyncIteration
            if self._changed is None:
                self._changed = trio.Event()
            await self._changed.wait()

    def _take(self) -> tuple[int, Any] | None:
        """The next (index, result) to yield, if there is one."""
        if self._ordered:
            index = self._next_index
            taken = self._by_index.pop(index, _NOTHING)
            if taken is _NOTHING:
                return None
            self._next_index += 1
            return index, taken
        return self._settled.popleft() if self._settled else None

    # -- what the feeder and the jobs report -----------------------------------

    def settled(self, index: int, value: Any) -> None:
        if self._ordered:
            self._by_index[index] = value
        else:
            self._settled.append((index, value))
        self._notify()

    def exhausted(self, count: int) -> None:
        self._pulled = count
        self._notify()

    def failed(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
            self._notify()

    def stopped(self) -> None:
        self._stopped = True
        self._notify()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None


@asynccontextmanager
async def open_map(
    pool: Pool,
    fn: Callable[[Any], Any],
    iterable: Iterable[Any] | AsyncIterable[Any],
    *,
    max_in_flight: int | None,
    ordered: bool,
    timeout: float | None,  # noqa: ASYNC109 -- per job, as in Pool.run
    return_exceptions: bool,
) -> AsyncIterator[MapResults[Any]]:
    """What :meth:`Pool.map` returns; see there."""
    if not callable(fn):
        raise TypeError(f"map's function must be callable, got {fn!r}")
    if max_in_flight is None:
        max_in_flight = pool._options.max_workers or available_cpus()
    elif isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int):
        raise TypeError(f"max_in_flight must be an int, got {type(max_in_flight).__name__}")
    elif max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight!r}")
    check_timeout(timeout)
    results: MapResults[Any] = MapResults(ordered=ordered)
    pace = _Pace()
    source = _Source(_aiter(iterable), results, pace, max_in_flight)
    with collapse_single_group():
        async with trio.open_nursery() as nursery:
            run = _Run(pool, fn, timeout, return_exceptions, results, source, pace)
            nursery.start_soon(run.lanes, max_in_flight)
            try:
                yield results
            finally:
                nursery.cancel_scope.cancel()  # leaving early: stop what is in flight


class _Source:
    """The inputs as ``(index, item)``: those given back (never begun)
    first, then the iterable's, pulled only while the read-ahead has room."""

    def __init__(
        self, items: AsyncIterator[Any], results: MapResults[Any], pace: _Pace, lanes: int
    ) -> None:
        self._items = items
        self._sync = items._iterator if isinstance(items, _SyncItems) else None
        self._lock = trio.Lock()  # an async iterable is advanced by one lane at a time
        self._results = results
        self._pace = pace  # its batch_limit() sizes the read-ahead
        self._lanes = lanes
        self._given_back: collections.deque[tuple[int, Any]] = collections.deque()
        self.pulled = 0
        self.exhausted = False  # the iterable ended, or raised
        self.busy = 0  # lanes holding inputs, some of which may come back (given back)

    def give_back(self, items: list[tuple[int, Any]]) -> None:
        """Inputs that never began: they go first (earliest first)."""
        self._given_back.extendleft(reversed(items))
        self._wake()

    async def take(self, wanted: int) -> list[tuple[int, Any]]:
        """Up to ``wanted`` inputs, at least one, waiting for room; [] at the end.

        Raises:
            Exception: what the iterable raised (it is then exhausted).
        """
        while True:
            given = self._given_back
            if given:
                return [given.popleft() for _ in range(min(wanted, len(given)))]
            if self.exhausted and not self.busy:
                return []
            limit = read_ahead(self._lanes, self._pace.batch_limit())
            room = 0 if self.exhausted else limit - (self.pulled - self._results.yielded)
            if room > 0:
                taken = await self._pull(min(wanted, room))
                if taken:
                    return taken
                continue  # it ended just now: wait for what may come back
            if self._results.room is None:
                self._results.room = trio.Event()
            await self._results.room.wait()

    def done_with(self) -> None:
        """A lane ran what it took: nothing more of it comes back."""
        self.busy -= 1
        self._wake()

    def _wake(self) -> None:
        if self._results.room is not None:
            self._results.room.set()
            self._results.room = None

    async def _pull(self, count: int) -> list[tuple[int, Any]]:
        taken: list[tuple[int, Any]] = []
        try:
            if self._sync is not None:
                for item in self._sync:
                    taken.append((self.pulled, item))
                    self.pulled += 1
                    if len(taken) == count:
                        return taken
            else:
                async with self._lock:
                    while len(taken) < count and not self.exhausted:
                        item = await anext(self._items)
                        taken.append((self.pulled, item))
                        self.pulled += 1
                    return taken
        except StopAsyncIteration:
            pass
        except BaseException:
            self.exhausted = True
            raise
        self.exhausted = True
        self._results.exhausted(self.pulled)
        return taken


class _Pace:
    """How large a lane's next batch is: twice its last one, up to
    ``MAX_BATCH`` jobs and ``BATCH_SECONDS`` of the jobs' measured time."""

    def __init__(self) -> None:
        self.per_job = 0.0  # seconds a job takes, as its lane saw it (a moving average)

    def batch_limit(self) -> int:
        """The largest batch the jobs' measured time allows (MAX_BATCH until measured)."""
        fit = int(BATCH_SECONDS / self.per_job) if self.per_job > 0 else MAX_BATCH
        return max(1, min(MAX_BATCH, fit))

    def next_size(self, last: int) -> int:
        return min(2 * last, self.batch_limit()) if last else 1

    def trim_after(self) -> float:
        """How long a batch's job may run before the jobs queued behind it
        are taken back, to run elsewhere: far longer than the jobs take."""
        return max(TRIM_SECONDS, 8 * self.per_job)

    def measured(self, seconds: float, jobs: int) -> None:
        if jobs:
            sample = seconds / jobs
            self.per_job = sample if self.per_job == 0 else 0.7 * self.per_job + 0.3 * sample


class _Run:
    """One map's lanes, and what they report."""

    def __init__(
        self,
        pool: Pool,
        fn: Callable[[Any], Any],
        timeout: float | None,
        return_exceptions: bool,
        results: MapResults[Any],
        source: _Source,
        pace: _Pace,
    ) -> None:
        self._pool = pool
        self._fn = fn
        self._timeout = timeout
        self._return_exceptions = return_exceptions
        self._results = results
        self._source = source
        self._scope = trio.CancelScope()  # the lanes': cancelled by the first error
        self._pace = pace  # shared with the source: batch sizes and the read-ahead

    async def lanes(self, count: int) -> None:
        try:
            with self._scope:
                async with trio.open_nursery() as lanes:
                    for _ in range(count):
                        lanes.start_soon(self._lane)
        finally:
            with trio.CancelScope(shield=True):
                await _aclose(self._source._items)  # an async generator's own finally runs now
            self._results.stopped()

    def _ended(self, index: int, value: Any, error: BaseException | None) -> None:
        """Input ``index``'s job ended."""
        if error is None:
            self._results.settled(index, value)
        elif self._return_exceptions:
            self._results.settled(index, error)
        else:
            self._results.failed(error)
            self._scope.cancel()  # the rest: every lane, and no more input

    async def _take(self, size: int) -> list[tuple[int, Any]]:
        """Up to ``size`` inputs; [] at the end, or when the iterable raised
        (its error then ends the map)."""
        try:
            return await self._source.take(size)
        except Exception as exc:  # noqa: BLE001 -- the iterable's own error ends the map
            self._results.failed(exc)
            self._scope.cancel()
            return []

    async def _lane(self) -> None:
        budget = None  # one for every worker the same inputs are offered to
        size = 0
        while True:
            size = self._pace.next_size(size)
            taken = await self._take(size)
            if not taken:
                return  # the end, or the iterable's error
            self._source.busy += 1
            try:
                budget = await self._run_taken(taken, budget)
            finally:
                self._source.done_with()

    async def _run_taken(
        self, taken: list[tuple[int, Any]], budget: _Budget | None
    ) -> _Budget | None:
        """Run inputs a lane took on a worker; returns the lane's budget."""
        pool = self._pool
        arguments = list(map(pickle_argument, _items(taken))) if len(taken) > 1 else []
        if budget is None:
            budget = _Budget(pool._options)
        try:
            member, worker = await pool._acquire(budget)
        except Exception as exc:  # noqa: BLE001 -- PoolClosedError...: each input's error
            for index, _ in taken:
                self._ended(index, None, exc)
            return None
        began = trio.current_time()
        try:
            ran, unstarted = await self._run_on(worker, taken, arguments)
        finally:
            pool._release(member)
        self._pace.measured(trio.current_time() - began, ran)
        if ran:
            budget = None
        else:
            try:
                pool._spend_on_unused_death(worker, budget)  # as Pool.run counts it
            except Exception as exc:  # noqa: BLE001 -- NoWorkerAvailableError: theirs
                for index, _ in unstarted:
                    self._ended(index, None, exc)
                budget, unstarted = None, []
        self._source.give_back(unstarted)
        return budget

    async def _run_on(
        self, worker: Worker, taken: list[tuple[int, Any]], arguments: list[bytes | None]
    ) -> tuple[int, list[tuple[int, Any]]]:
        """Run ``taken`` (or its head: the rest goes back) on ``worker``.
        Returns how many jobs began, and the inputs that never began."""
        count, payload = self._batch_of(worker, taken, arguments)
        self._source.give_back(taken[count:])
        if payload is None:
            index, item = taken[0]
            job = await worker._run(self._fn, (item,), self._timeout, True)
            if job is None:
                return 0, taken[:1]
            self._ended(index, job.value, job.error)
            return 1, []
        batch_items = taken[:count]
        unstarted: list[tuple[int, Any]] = []

        def on_job(position: int, value: Any, error: BaseException | None) -> None:
            if value is UNSTARTED and worker.returncode is None:
                self._source.give_back([batch_items[position]])  # taken back (TRIM): now
            elif value is UNSTARTED:
                unstarted.append(batch_items[position])  # the worker died: see _lane
            else:
                self._ended(batch_items[position][0], value, error)

        batch = Batch(payload, count, on_job, self._pace.trim_after())
        async with trio.open_nursery() as feeding:
            if worker._options.max_jobs is None:
                feeding.start_soon(self._keep_fed, worker, batch, batch_items)
            sent = await worker._run_batch(batch, self._timeout)
            if not sent:
                feeding.cancel_scope.cancel()  # it never ran: nothing to extend
        if not sent:
            return 0, batch_items
        return batch.jobs_begun(False), unstarted

    async def _keep_fed(
        self, worker: Worker, batch: Batch, batch_items: list[tuple[int, Any]]
    ) -> None:
        """Queue the next order on a running batch when half of the last one
        is done, so its worker never waits for the parent between orders
        (a slow job ends no half: nothing more queues behind it). Ends when
        the batch does, or when the next inputs cannot join it."""
        size = len(batch_items)
        while True:
            await batch.watch_low(size // 2).wait()
            if batch.settled:
                return
            size = self._pace.next_size(size)
            taken = await self._take(size)
            arguments = list(map(pickle_argument, _items(taken)))
            count, payload = self._batch_of(worker, taken, arguments)
            if payload is None:
                self._source.give_back(taken)  # for a lane: alone, or a batch of their own
                return
            batch_items.extend(taken[:count])
            self._source.give_back(taken[count:])
            if not worker._extend_batch(batch, count, payload):
                del batch_items[-count:]
                self._source.give_back(taken[:count])
                return

    def _batch_of(
        self, worker: Worker, taken: list[tuple[int, Any]], arguments: list[bytes | None]
    ) -> tuple[int, bytes | None]:
        """How many of ``taken``, from the first, go to ``worker`` in one
        BATCH, and its payload; ``(1, None)``: the first goes alone."""
        count = _batchable(worker, taken, arguments)
        payload = self._payload(worker, arguments[:count]) if count > 1 else None
        return (count, payload) if payload is not None else (1, None)

    def _payload(self, worker: Worker, arguments: list[bytes | None]) -> bytes | None:
        """A BATCH payload of ``arguments`` that fits ``worker``'s frames, or None."""
        try:
            payload = batch_payload(self._fn, arguments)  # type: ignore[arg-type]
        except SerializationError:
            return None  # alone, the first gets Pool.run's own error
        if len(payload) + _FRAME_ROOM > max_payload(worker._options.max_message_bytes):
            return None
        return payload


def _items(taken: list[tuple[int, Any]]) -> Iterator[Any]:
    return (item for _, item in taken)


def _batchable(worker: Worker, taken: list[tuple[int, Any]], arguments: list[bytes | None]) -> int:
    """How many of ``taken``, from the first, can go to ``worker`` in one batch."""
    options = worker._options
    if len(taken) < 2 or options.worker_loop is not None:
        return 1
    limit = len(taken)
    if options.max_jobs is not None:
        limit = min(limit, options.max_jobs - worker.jobs_done)
    large = options.shm_min_bytes
    size = 0
    for count, ((_, item), data) in enumerate(zip(taken[:limit], arguments, strict=False)):
        if data is None or (large and has_large_buffer(item, large)):
            return max(count, 1)
        size += len(data)
        if size > BATCH_BYTES:
            return max(count, 1)
    return max(limit, 1)


class _Indexed(Generic[T]):
    def __init__(self, results: MapResults[T]) -> None:
        self._results = results

    def __aiter__(self) -> _Indexed[T]:
        return self

    async def __anext__(self) -> tuple[int, T]:
        return await self._results._next()


def _aiter(iterable: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(iterable, AsyncIterable):
        return aiter(iterable)
    if isinstance(iterable, Iterable):
        return _SyncItems(iter(iterable))
    raise TypeError(f"map's inputs must be an iterable or an async iterable, got {iterable!r}")


class _SyncItems:
    """A sync iterator as an async one. ``next()`` runs in the event loop's
    thread: cheap for a generator or a file; an iterable that blocks for
    long should be an async one."""

    def __init__(self, iterator: Iterator[Any]) -> None:
        self._iterator = iterator

    def __aiter__(self) -> _SyncItems:
        return self

    async def __anext__(self) -> Any:
        try:
            return next(self._iterator)
        except StopIteration:
            raise StopAsyncIteration from None


async def _aclose(items: AsyncIterator[Any]) -> None:
    aclose = getattr(items, "aclose", None)
    if aclose is not None:
        await aclose()
