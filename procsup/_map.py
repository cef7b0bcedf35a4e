"""``Pool.map``: one function over many inputs, in bounded memory.

How it stays bounded, by construction:

* The feeder pulls the next input only once it holds a *window* token and a
  *running* token: at most ``max_in_flight`` jobs run, and at most
  ``window`` (twice that) inputs are between "pulled" and "yielded to the
  caller". A 10-million-line generator is never read ahead of that.
* A running token goes back when the job settles; a window token when its
  result is handed to the caller. So finished results waiting for an earlier
  one (ordered) or for a slow consumer (unordered) are at most ``window``.
* Every job is a task of the map's own nursery, inside the caller's ``async
  with``: leaving the block cancels the feeder and the jobs, and
  :meth:`Pool.run`'s cancellation stops and reaps their workers before the
  block is left.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import trio

from ._cpus import available_cpus
from ._options import check_timeout
from ._util import collapse_single_group

if TYPE_CHECKING:
    from ._pool import Pool

__all__ = ["MapResults", "open_map"]

T = TypeVar("T")
_NOTHING: Any = object()


class MapResults(Generic[T]):
    """The results of :meth:`Pool.map`, as an async iterator; valid inside its
    ``async with`` block. ``async for value in results`` gives the values;
    ``async for index, value in results.indexed()`` gives each with its
    input's index (counted from 0), which says which input an unordered
    result or a returned exception belongs to."""

    def __init__(self, *, ordered: bool, window: int) -> None:
        self._ordered = ordered
        self.window = trio.Semaphore(window)  # a token per input pulled and not yet yielded
        # -- settled jobs not yet yielded: results (or, return_exceptions, errors)
        self._by_index: dict[int, Any] = {}  # ordered: waiting for earlier ones
        self._settled: collections.deque[tuple[int, Any]] = collections.deque()  # unordered
        self._next_index = 0  # ordered: the index to yield next
        # -- the end: set once each
        self._pulled: int | None = None  # inputs in all, once the iterable is exhausted
        self._yielded = 0
        self._failure: BaseException | None = None  # the first error, when it ends the map
        self._stopped = False  # every job and the feeder are done (after a failure)
        self._changed = trio.Event()  # set (and renewed) at each change above

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
                self._yielded += 1
                self.window.release()
                return taken
            elif self._pulled is not None and self._yielded == self._pulled:
                raise StopAsyncIteration
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
        self._changed.set()
        self._changed = trio.Event()


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
    items = _aiter(iterable)
    results: MapResults[Any] = MapResults(ordered=ordered, window=2 * max_in_flight)
    running = trio.Semaphore(max_in_flight)  # a token per job not yet settled

    async def job(index: int, item: Any, scope: trio.CancelScope) -> None:
        try:
            value = await pool.run(fn, item, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 -- a job's error is its outcome
            if not return_exceptions:
                results.failed(exc)
                scope.cancel()  # the rest: the feeder and every other job
                return
            results.settled(index, exc)
        else:
            results.settled(index, value)
        finally:
            running.release()

    async def feed() -> None:
        try:
            async with trio.open_nursery() as jobs:
                index = 0
                while True:
                    await results.window.acquire()
                    await running.acquire()
                    try:
                        item = await anext(items)
                    except StopAsyncIteration:
                        results.exhausted(index)
                        return
                    except Exception as exc:  # noqa: BLE001 -- the iterable's own error ends the map
                        results.failed(exc)
                        jobs.cancel_scope.cancel()
                        return
                    jobs.start_soon(job, index, item, jobs.cancel_scope)
                    index += 1
        finally:
            with trio.CancelScope(shield=True):
                await _aclose(items)  # an async generator's own finally runs now
            results.stopped()

    with collapse_single_group():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed)
            try:
                yield results
            finally:
                nursery.cancel_scope.cancel()  # leaving early: stop what is in flight


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
