"""Pool.map with real worker processes: order, errors, laziness, early exit,
timeouts, and the parent's memory over 100,000 inputs."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any, Generic, TypeVar

import psutil
import pytest
import trio
import trio.lowlevel
from map_jobs import fail_on_three, logged, ran, sleep_then_return, slow_on_zero, square

import procsup
from procsup._map import MAX_BATCH, read_ahead

T = TypeVar("T")


async def collect(results: AsyncIterator[Any]) -> list[Any]:
    return [value async for value in results]


async def test_results_come_in_input_order() -> None:
    async with (
        procsup.open_pool(max_jobs=None, max_workers=2) as pool,
        pool.map(slow_on_zero, range(8)) as results,
    ):
        assert await collect(results) == list(range(8))  # 0 finished last


async def test_unordered_results_come_as_they_complete() -> None:
    async with procsup.open_pool(idle=2, max_jobs=None, max_workers=2) as pool:
        await pool.wait_warm()
        inputs = [0.8, 0.0, 0.0, 0.0]
        async with pool.map(sleep_then_return, inputs, ordered=False) as results:
            got = await collect(results)
    assert sorted(got) == sorted(inputs)
    assert got[-1] == 0.8  # the slow first input did not hold back the others


async def test_indexed_says_which_input_each_result_belongs_to() -> None:
    async with (
        procsup.open_pool(max_jobs=None) as pool,
        pool.map(fail_on_three, range(8), ordered=False, return_exceptions=True) as results,
    ):
        pairs = [pair async for pair in results.indexed()]
    assert sorted(index for index, _ in pairs) == list(range(8))
    for index, value in pairs:
        if index == 3:
            assert isinstance(value, ValueError)
        else:
            assert value == index


async def test_a_sync_generator_and_an_async_iterable() -> None:
    async def numbers() -> AsyncIterator[int]:
        for i in range(20):
            await trio.lowlevel.checkpoint()
            yield i

    async with procsup.open_pool(max_jobs=None) as pool:
        async with pool.map(square, (i for i in range(20))) as results:
            assert await collect(results) == [i * i for i in range(20)]
        async with pool.map(square, numbers(), ordered=False) as results:
            assert sorted(await collect(results)) == [i * i for i in range(20)]
        async with pool.map(square, []) as results:
            assert await collect(results) == []


class _Counted(Generic[T]):
    """``items``, counting how many the map has pulled."""

    def __init__(self, items: Iterable[T]) -> None:
        self._items = items
        self.pulled = 0

    def __iter__(self) -> Iterator[T]:
        for item in self._items:
            self.pulled += 1
            yield item


async def test_the_first_error_cancels_the_rest_and_is_raised() -> None:
    inputs = _Counted(range(100_000))
    async with procsup.open_pool(max_jobs=None, max_workers=2) as pool:
        got = []

        async def consume() -> None:
            async with pool.map(fail_on_three, inputs, max_in_flight=2) as results:
                async for value in results:
                    got.append(value)

        with pytest.raises(ValueError, match="three is bad"):
            await consume()
        assert got == list(range(len(got)))
        assert len(got) <= 3
        # it stopped reading: ordered, nothing past input 3 is yielded, so at
        # most the read-ahead (two full batches per job in flight) was pulled
        assert inputs.pulled <= 3 + read_ahead(2)
        stats = pool.statistics()
        assert stats.busy == 0
        assert await pool.run(square, 3) == 9  # the pool serves on


async def test_return_exceptions_yields_the_error_in_its_place() -> None:
    async with (
        procsup.open_pool(max_jobs=None) as pool,
        pool.map(fail_on_three, range(6), return_exceptions=True) as results,
    ):
        got = await collect(results)
    assert [type(v) for v in got] == [int, int, int, ValueError, int, int]
    assert got[:3] == [0, 1, 2]
    assert got[4:] == [4, 5]
    assert str(got[3]) == "three is bad: 3"


async def test_leaving_early_cancels_the_jobs_in_flight_and_leaks_nothing() -> None:
    async with procsup.open_pool(idle=2, max_workers=2, max_jobs=None, cancel_grace=0.2) as pool:
        await pool.wait_warm()
        with trio.fail_after(5):  # the 30 s jobs did not run to their end
            async with pool.map(sleep_then_return, [0.0, 30.0, 30.0]) as results:
                async for value in results:
                    assert value == 0.0
                    break
            # left the block: the cancelled jobs' workers are stopped
            assert pool.statistics().busy == 0
            assert await pool.run(square, 4) == 16
    # (the autouse guard fails the test if a process or descriptor is left)


async def test_an_exception_in_the_block_stops_the_map() -> None:
    async with procsup.open_pool(max_workers=2, max_jobs=None, cancel_grace=0.2) as pool:
        with trio.fail_after(5), pytest.raises(KeyError):
            async with pool.map(sleep_then_return, [30.0, 30.0]):
                raise KeyError("mine")
        assert pool.statistics().busy == 0


async def test_slow_jobs_read_two_inputs_ahead_per_job_in_flight() -> None:
    inputs = _Counted([0.03] * 1_000)  # seconds: over BATCH_SECONDS, so one input per batch
    async with (
        procsup.open_pool(max_jobs=None, max_workers=2) as pool,
        pool.map(sleep_then_return, inputs, max_in_flight=2) as results,
    ):
        seen = 0
        async for _ in results:
            seen += 1
            assert inputs.pulled <= seen + read_ahead(2, 1)  # 4: two per job in flight
            await trio.sleep(0.1)  # a consumer slower than the jobs: reading waits for it
            if seen == 10:
                break


async def test_the_iterable_is_read_lazily() -> None:
    inputs = _Counted(range(10_000))
    async with (
        procsup.open_pool(max_jobs=None, max_workers=2) as pool,
        pool.map(square, inputs, max_in_flight=2) as results,
    ):
        seen = 0
        async for _ in results:
            seen += 1
            assert read_ahead(2) == 4 * MAX_BATCH
            assert inputs.pulled <= seen + read_ahead(2)  # two full batches per job in flight
            if seen == 50:
                break


async def test_the_timeout_is_per_job_and_excludes_the_queue_wait() -> None:
    async with procsup.open_pool(idle=1, max_workers=1, max_jobs=None) as pool:
        await pool.wait_warm()
        # one worker: the second job waits 0.4 s for it, then runs 0.4 s < 0.7
        async with pool.map(sleep_then_return, [0.4, 0.4], timeout=0.7) as results:
            assert await collect(results) == [0.4, 0.4]
        async with pool.map(
            sleep_then_return, [5.0, 0.0], timeout=0.5, return_exceptions=True
        ) as results:
            slow, quick = await collect(results)
    assert isinstance(slow, procsup.JobTimeoutError)
    assert slow.timeout == 0.5
    assert quick == 0.0


async def test_bad_arguments_are_refused_before_any_job() -> None:
    async with procsup.open_pool(idle=0) as pool:
        with pytest.raises(ValueError, match="max_in_flight must be >= 1"):
            async with pool.map(square, [1], max_in_flight=0):
                pass
        with pytest.raises(TypeError, match="must be callable"):
            async with pool.map(42, [1]):  # type: ignore[arg-type]
                pass
        with pytest.raises(TypeError, match="iterable"):
            async with pool.map(square, 42):  # type: ignore[arg-type]
                pass
        assert pool.statistics().starts == 0


async def test_an_error_from_the_iterable_ends_the_map() -> None:
    def inputs() -> Iterator[int]:
        yield 1
        raise OSError("the input file went away")

    async with procsup.open_pool(max_jobs=None) as pool:
        with pytest.raises(OSError, match="went away"):
            async with pool.map(square, inputs(), return_exceptions=True) as results:
                await collect(results)


def rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


@pytest.mark.slow
async def test_100_000_inputs_keep_the_parents_memory_flat() -> None:
    """An unbounded map would hold a task (KiBs) per input: hundreds of MiB."""
    total, checkpoint = 100_000, 10_000
    seen = 0
    async with procsup.open_pool(idle=2, max_workers=2, max_jobs=None) as pool:
        async with pool.map(square, range(total), ordered=False) as results:
            async for _ in results:
                seen += 1
                if seen == checkpoint:
                    before = rss()
        after = rss()
    growth_mib = (after - before) / 2**20
    print(f"parent RSS growth from input {checkpoint} to {total}: {growth_mib:.1f} MiB")
    assert seen == total
    assert growth_mib < 20


# -- batches: many inputs go to a worker in one order, each still its own job ------


def run_log(tmp_path: Any, actions: dict[int, str], count: int) -> list[tuple[str, int, str]]:
    """Inputs for map_jobs.logged: ``count`` of them, ``actions`` by index."""
    return [(str(tmp_path), x, actions.get(x, "")) for x in range(count)]


async def test_batched_results_keep_their_order_and_each_input_runs_once(tmp_path: Any) -> None:
    count = 3000
    async with procsup.open_pool(idle=2, max_workers=2, max_jobs=None) as pool:
        async with pool.map(logged, run_log(tmp_path, {}, count)) as results:
            assert await collect(results) == list(range(count))
        async with pool.map(square, range(count), ordered=False) as results:
            assert sorted(await collect(results)) == [x * x for x in range(count)]
    runs = sorted(x for xs in ran(str(tmp_path)).values() for x in xs)
    assert runs == list(range(count))


async def test_a_crash_mid_batch_fails_only_the_job_it_was_running(tmp_path: Any) -> None:
    """Input 1500 exits its worker: it alone gets the crash; the inputs of
    its batch that had not begun run on another worker; none runs twice."""
    count, fatal = 3000, 1500
    async with procsup.open_pool(idle=2, max_workers=2, max_jobs=None) as pool:
        await pool.wait_warm()
        inputs = run_log(tmp_path, {fatal: "crash"}, count)
        async with pool.map(logged, inputs, ordered=False, return_exceptions=True) as results:
            got = {index: value async for index, value in results.indexed()}
        assert await pool.run(square, 5) == 25  # the pool serves on
    assert sorted(got) == list(range(count))
    errors = {index: value for index, value in got.items() if isinstance(value, BaseException)}
    assert list(errors) == [fatal]
    assert isinstance(errors[fatal], procsup.WorkerCrashedError)
    assert errors[fatal].phase == "job"
    assert all(got[x] == x for x in range(count) if x != fatal)
    logs = ran(str(tmp_path))
    assert sorted(x for xs in logs.values() for x in xs) == list(range(count))  # once each
    crashed = next(pid for pid, xs in logs.items() if fatal in xs)
    assert logs[crashed][-1] == fatal  # what it ran last


async def test_a_timeout_inside_a_batch_is_that_jobs_own(tmp_path: Any) -> None:
    count, slow = 1500, 700
    async with procsup.open_pool(idle=2, max_workers=2, max_jobs=None, cancel_grace=0.2) as pool:
        await pool.wait_warm()
        inputs = run_log(tmp_path, {slow: "sleep:30"}, count)
        with trio.fail_after(20):  # not the 30 s job's end
            async with pool.map(
                logged, inputs, ordered=False, timeout=2.0, return_exceptions=True
            ) as results:
                got = {index: value async for index, value in results.indexed()}
    errors = {index: value for index, value in got.items() if isinstance(value, BaseException)}
    assert list(errors) == [slow]
    assert isinstance(errors[slow], procsup.JobTimeoutError)
    assert errors[slow].timeout == 2.0
    assert all(got[x] == x for x in range(count) if x != slow)
    assert sorted(x for xs in ran(str(tmp_path)).values() for x in xs) == list(range(count))


async def test_errors_inside_batches_are_each_inputs_own(tmp_path: Any) -> None:
    count = 2000
    failing = set(range(5, count, 7))
    inputs = run_log(tmp_path, dict.fromkeys(failing, "raise"), count)
    async with (
        procsup.open_pool(idle=2, max_workers=2, max_jobs=None) as pool,
        pool.map(logged, inputs, return_exceptions=True) as results,
    ):
        got = await collect(results)
    for x, value in enumerate(got):
        if x in failing:
            assert isinstance(value, ValueError)
            assert str(value) == f"input {x} raises"
        else:
            assert value == x
    assert sorted(x for xs in ran(str(tmp_path)).values() for x in xs) == list(range(count))


async def test_leaving_mid_batch_stops_its_workers_and_nothing_else_runs(tmp_path: Any) -> None:
    count, slow = 100_000, 1200
    async with procsup.open_pool(idle=2, max_workers=2, max_jobs=None, cancel_grace=0.2) as pool:
        await pool.wait_warm()
        inputs = run_log(tmp_path, {slow: "sleep:30"}, count)
        with trio.fail_after(10):
            async with pool.map(logged, inputs, ordered=False) as results:
                seen = 0
                async for _ in results:
                    seen += 1
                    if seen == 3000:  # the slow input is running by then
                        break
            assert pool.statistics().busy == 0
            assert await pool.run(square, 6) == 36
        ran_before = ran(str(tmp_path))
        await trio.sleep(0.3)
        assert ran(str(tmp_path)) == ran_before  # nothing began after the block was left
    runs = sorted(x for xs in ran_before.values() for x in xs)
    assert slow in runs
    assert len(runs) == len(set(runs)) < count
    # (the autouse guard fails the test if a process or descriptor is left)


async def test_a_slow_job_gives_back_the_jobs_queued_behind_it(tmp_path: Any) -> None:
    """Unordered: while input 1500 runs for 3 s, the inputs queued behind it
    in its worker's batch are taken back and run on the other worker, so
    every other result comes first, long before the slow one."""
    count, slow = 3000, 1500
    async with procsup.open_pool(idle=2, max_workers=2, max_jobs=None) as pool:
        await pool.wait_warm()
        inputs = run_log(tmp_path, {slow: "sleep:3"}, count)
        began = trio.current_time()
        arrived = {}
        async with pool.map(logged, inputs, ordered=False) as results:
            async for index, value in results.indexed():
                assert value == index
                arrived[index] = trio.current_time() - began
    assert list(arrived)[-1] == slow
    others = max(at for index, at in arrived.items() if index != slow)
    assert others < arrived[slow] - 1.0  # none waited for the slow one
    assert sorted(x for xs in ran(str(tmp_path)).values() for x in xs) == list(range(count))
