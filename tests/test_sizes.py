"""Sizes at the limit: ``max_message_bytes`` means one thing, checked before
anything is sent, on both sides."""

from __future__ import annotations

import logging
import pickle
from typing import Any

import helpers
import pytest

import procsup

LIMIT = 64 * 1024


def _job_payload_size(n: int) -> int:
    return len(pickle.dumps((helpers.length, (b"x" * n,)), pickle.HIGHEST_PROTOCOL))


def _result_payload_size(n: int) -> int:
    return len(pickle.dumps(b"x" * n, pickle.HIGHEST_PROTOCOL))


async def _sweep(worker: procsup.Worker, run: Any, sizes: range) -> None:
    """Run ``run(worker, n)`` for each size: below some size every one must
    pass, above it every one must be refused with SerializationError naming
    the limit, and the worker must serve on."""
    outcomes: dict[int, str] = {}
    for n in sizes:
        try:
            outcomes[n] = "passed" if await run(worker, n) == n else "wrong"
        except procsup.SerializationError as exc:
            outcomes[n] = "refused" if "max_message_bytes" in str(exc) else str(exc)
    assert await worker.run(helpers.add, 1, 2) == 3
    passed = [n for n in sizes if outcomes[n] == "passed"]
    assert passed, outcomes
    assert passed == list(range(sizes.start, passed[-1] + 1)), outcomes
    assert all(outcomes[n] == "refused" for n in range(passed[-1] + 1, sizes.stop)), outcomes
    assert passed[-1] + 1 < sizes.stop, outcomes


async def test_arguments_within_bytes_of_the_limit_pass_or_are_refused_before_sending(
    start_method: str,
) -> None:
    # A few bytes either side of where the frame's own bytes (id, length)
    # push the frame over the limit.
    near = LIMIT - _job_payload_size(0)

    async def send(worker: procsup.Worker, n: int) -> int:
        return await worker.run(helpers.length, b"x" * n)

    async with procsup.open_worker(
        max_jobs=None, max_message_bytes=LIMIT, start_method=start_method
    ) as worker:
        await _sweep(worker, send, range(near - 24, near + 4))


async def test_results_within_bytes_of_the_limit_pass_or_are_refused_in_the_worker(
    start_method: str,
) -> None:
    near = LIMIT - _result_payload_size(0)

    async def receive(worker: procsup.Worker, n: int) -> int:
        return len(await worker.run(helpers.make_bytes, n))

    async with procsup.open_worker(
        max_jobs=None, max_message_bytes=LIMIT, start_method=start_method
    ) as worker:
        pid = worker.pid
        await _sweep(worker, receive, range(near - 24, near + 4))
        assert await worker.run(helpers.getpid) == pid  # the same worker throughout


async def test_an_oversized_exception_arrives_cut_with_its_type(start_method: str) -> None:
    # 2 MiB of message under a 4 MiB limit: message, traceback and pickle
    # each carry it.
    limit = 4 * 1024 * 1024
    async with procsup.open_worker(
        max_jobs=None, max_message_bytes=limit, start_method=start_method
    ) as worker:
        pid = worker.pid
        with pytest.raises(procsup.RemoteError) as info:
            await worker.run(helpers.raise_big, 2 * 1024 * 1024)
        assert await worker.run(helpers.getpid) == pid  # it survived
    err = info.value
    assert err.type_name == "ValueError"
    assert err.message.startswith("x" * 1000)
    assert len(err.message) > 1024 * 1024
    assert "bytes cut to fit max_message_bytes" in err.message + err.remote_traceback
    assert "raise_big" in err.remote_traceback


async def test_an_exception_with_a_long_traceback_still_arrives_as_itself(
    start_method: str,
) -> None:
    async with procsup.open_worker(max_message_bytes=LIMIT, start_method=start_method) as worker:
        with pytest.raises(ValueError) as info:
            await worker.run(helpers.raise_big, LIMIT // 3)
    assert str(info.value) == "x" * (LIMIT // 3)
    assert isinstance(info.value.__cause__, procsup.RemoteTraceback)
    assert "bytes cut to fit max_message_bytes" in info.value.__cause__.text


async def test_an_oversized_log_record_arrives_cut(
    start_method: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tests.big")
    async with procsup.open_worker(
        max_jobs=None, max_message_bytes=LIMIT, start_method=start_method
    ) as worker:
        assert await worker.run(helpers.log_big, 2 * LIMIT) == 2 * LIMIT
        assert await worker.run(helpers.add, 1, 2) == 3
    (record,) = [r for r in caplog.records if r.name == "tests.big"]
    assert "bytes cut to fit max_message_bytes" in record.getMessage()
    assert record.getMessage().count("y") > LIMIT // 2


@pytest.mark.parametrize("value", [2**32, 2**40])
async def test_a_limit_the_frame_header_cannot_carry_is_refused(value: int) -> None:
    with pytest.raises(ValueError, match=r"max_message_bytes must be <= 4294967295"):
        async with procsup.open_worker(max_message_bytes=value):
            pass
    with pytest.raises(ValueError, match=r"max_message_bytes must be <= 4294967295"):
        async with procsup.open_pool(max_message_bytes=value):
            pass


async def test_the_largest_limit_the_header_carries_is_accepted() -> None:
    async with procsup.open_worker(max_message_bytes=2**32 - 1) as worker:
        assert await worker.run(helpers.add, 1, 2) == 3
