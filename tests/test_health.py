"""Health answers never wait behind anything else a worker says."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import helpers
import pytest

import procsup

pytestmark = pytest.mark.usefixtures("each_start_method")


class _SlowHandler(logging.Handler):
    """A parent whose handling of a record takes longer than the worker's
    logging of one, so that the worker's queue of records never empties.
    (It spins rather than sleeps: a sleep this short is mostly timer slack.)"""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.handled = 0

    def emit(self, record: logging.LogRecord) -> None:
        end = time.perf_counter() + self.seconds
        while time.perf_counter() < end:
            pass
        self.handled += 1


@pytest.fixture
def slow_handler() -> Iterator[_SlowHandler]:
    logger = logging.getLogger("tests.chatty")
    handler = _SlowHandler(0.0003)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


async def test_a_chatty_cpu_bound_job_is_not_killed_as_unresponsive(
    slow_handler: _SlowHandler,
) -> None:
    # 5,000 records a second for 4 s, handled at 3,300 a second, with
    # ping_timeout 2 s: a PONG that queued behind the records would wait for
    # them to run out (at the job's end) and miss it; one that goes ahead of
    # them waits only for what is in the socket (well under a second).
    async with procsup.open_worker(ping_interval=0.1, ping_timeout=2.0) as worker:
        logged = await worker.run(helpers.chatty_cpu, 4.0, 5_000)
    assert logged > 1_000  # it did log, and the job ran to its end
    assert slow_handler.handled > 1_000
    assert worker.last_ping_rtt is not None
