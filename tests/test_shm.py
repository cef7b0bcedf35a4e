"""Large buffers travel through shared memory (procsup._shm): what a user
gets back, what the limit is, and that nothing is left behind -- no
descriptor, no mapping, no /dev/shm entry -- when a worker dies in the
middle or a caller gives up."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import shm_jobs
import trio

import procsup
from procsup import _shm

MIB = 1024 * 1024


# mmap is in every worker: its start mark (procsup._startmark, issue 10);
# procsup._shm and fcntl only where a large payload needs them.
_START_MARK = ["mmap"]


def leftovers() -> list[str]:
    """This process's shared-memory segments: open descriptors and mappings."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if "memfd:procsup" in target:
            found.append(f"fd {name} -> {target}")
    with open("/proc/self/maps") as maps:
        found += [line.strip() for line in maps if "memfd:procsup" in line]
    return found


@pytest.fixture(autouse=True)
def nothing_left() -> Iterator[None]:
    """Every test here ends with no segment of ours and /dev/shm as it was."""
    before = set(os.listdir("/dev/shm"))
    yield
    assert leftovers() == []
    assert set(os.listdir("/dev/shm")) == before


@pytest.mark.parametrize("kind", ["bytes", "bytearray"])
async def test_large_bytes_round_trip(start_method: str, kind: str) -> None:
    payload = shm_jobs.make_bytes(4 * MIB, kind)
    async with procsup.open_pool(idle=1, max_jobs=None, start_method=start_method) as pool:
        got = await pool.run(shm_jobs.echo, payload)
        made = await pool.run(shm_jobs.make_bytes, 2 * MIB, kind)
        assert await pool.run(shm_jobs.shm_modules_loaded) == ["mmap", "procsup._shm"]
    assert type(got) is type(payload)
    assert got == payload
    assert made == shm_jobs.make_bytes(2 * MIB, kind)


async def test_memoryview_and_nested_buffers_round_trip() -> None:
    view = memoryview(bytearray(shm_jobs.make_bytes(MIB))).cast("I")
    nested = {"a": shm_jobs.make_bytes(MIB), "b": [1, view]}
    async with procsup.open_worker(max_jobs=None) as worker:
        got_view = await worker.run(shm_jobs.echo, view)
        got_nested = await worker.run(shm_jobs.echo, nested)
    assert type(got_view) is memoryview
    assert (got_view.format, got_view.shape) == ("I", view.shape)
    assert got_view.tobytes() == view.tobytes()
    assert got_nested["a"] == nested["a"]
    assert got_nested["b"][0] == 1
    assert got_nested["b"][1].tobytes() == view.tobytes()
    del got_view, got_nested  # the views kept the result's mapping alive
    assert leftovers() == []


async def test_numpy_arrays_round_trip(start_method: str) -> None:
    numpy = pytest.importorskip("numpy")
    array = numpy.arange(MIB, dtype=numpy.float64).reshape(1024, 1024)
    frozen = array.copy()
    frozen.flags.writeable = False
    async with procsup.open_worker(max_jobs=None, start_method=start_method) as worker:
        got = await worker.run(shm_jobs.echo, array)
        got_frozen = await worker.run(shm_jobs.echo, frozen)
    assert numpy.array_equal(got, array)
    assert got.dtype == array.dtype
    assert got.shape == array.shape
    assert got.flags.writeable
    assert not got_frozen.flags.writeable
    got[0, 0] = -1.0  # the caller's own array, backed by the result's mapping
    assert leftovers() != []
    del got, got_frozen
    assert leftovers() == []


async def test_small_payloads_import_nothing_in_the_worker(start_method: str) -> None:
    async with procsup.open_worker(max_jobs=None, start_method=start_method) as worker:
        assert await worker.run(shm_jobs.shm_modules_loaded, b"x" * 1000) == _START_MARK
        assert await worker.run(shm_jobs.echo, b"y" * (_shm_min() - 1)) == b"y" * (_shm_min() - 1)
        assert await worker.run(shm_jobs.shm_modules_loaded) == _START_MARK


async def test_shm_min_bytes_none_keeps_everything_in_band() -> None:
    payload = shm_jobs.make_bytes(2 * MIB)
    async with procsup.open_worker(max_jobs=None, shm_min_bytes=None) as worker:
        assert await worker.run(shm_jobs.echo, payload) == payload
        assert await worker.run(shm_jobs.shm_modules_loaded, payload) == _START_MARK


async def test_max_message_bytes_bounds_shared_memory_too() -> None:
    limit = MIB
    async with procsup.open_worker(
        max_jobs=None, max_message_bytes=limit, shm_min_bytes=1024
    ) as worker:
        with pytest.raises(procsup.SerializationError, match="max_message_bytes"):
            await worker.run(shm_jobs.echo, shm_jobs.make_bytes(2 * MIB))
        with pytest.raises(procsup.SerializationError, match="max_message_bytes"):
            await worker.run(shm_jobs.make_bytes, 2 * MIB)
        assert await worker.run(shm_jobs.echo, shm_jobs.make_bytes(limit // 2))
        assert await worker.run(shm_jobs.shm_modules_loaded) == ["mmap", "procsup._shm"]


async def test_worker_dies_holding_large_arguments(start_method: str) -> None:
    async with procsup.open_pool(idle=1, max_jobs=None, start_method=start_method) as pool:
        with pytest.raises(procsup.WorkerCrashedError):
            await pool.run(shm_jobs.exit_holding, shm_jobs.make_bytes(8 * MIB))
        assert leftovers() == []
        assert await pool.run(shm_jobs.echo, 1) == 1


async def test_caller_cancelled_with_large_arguments_out(start_method: str) -> None:
    async with procsup.open_pool(idle=1, max_jobs=None, start_method=start_method) as pool:
        with trio.move_on_after(0.5) as scope:
            await pool.run(shm_jobs.sleep_holding, shm_jobs.make_bytes(8 * MIB), 30.0)
        assert scope.cancelled_caught
        assert leftovers() == []
        assert await pool.run(shm_jobs.echo, 1) == 1


def _on_alloc(monkeypatch: pytest.MonkeyPatch, then: Any) -> None:
    """Call ``then()`` once the parent has made a result's segment."""
    alloc = _shm.Transfers.alloc

    def alloc_then(self: _shm.Transfers, job_id: int, size: int) -> bytes:
        frame = alloc(self, job_id, size)
        then()
        return frame

    monkeypatch.setattr(_shm.Transfers, "alloc", alloc_then)


async def test_worker_dies_in_the_middle_of_a_large_result(
    start_method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with procsup.open_worker(max_jobs=None, start_method=start_method) as worker:
        _on_alloc(monkeypatch, lambda: os.kill(worker.pid, signal.SIGKILL))
        with pytest.raises(procsup.WorkerCrashedError):
            await worker.run(shm_jobs.make_bytes, 8 * MIB)
    assert leftovers() == []


async def test_caller_cancelled_in_the_middle_of_a_large_result(
    start_method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with procsup.open_pool(idle=1, max_jobs=None, start_method=start_method) as pool:
        with trio.CancelScope() as scope:
            _on_alloc(monkeypatch, scope.cancel)
            await pool.run(shm_jobs.make_bytes, 8 * MIB)
        assert scope.cancelled_caught
        assert leftovers() == []
        monkeypatch.undo()
        assert await pool.run(shm_jobs.make_bytes, 256) == shm_jobs.make_bytes(256)


async def test_stray_alloc_is_a_protocol_error_and_the_pool_serves_on() -> None:
    async with procsup.open_pool(idle=1, max_jobs=None) as pool:
        with pytest.raises(procsup.ProtocolError, match="ALLOC"):
            await pool.run(shm_jobs.send_stray_alloc)
        assert await pool.run(shm_jobs.echo, 2) == 2


def _shm_min() -> int:
    from procsup._options import WorkerOptions

    value = WorkerOptions().shm_min_bytes
    assert value is not None
    return value
