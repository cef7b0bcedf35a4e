"""A worker's output and logs in the parent: ``capture_output=True`` turns
fds 1 and 2 into log records; records keep the parent's per-logger levels
and their ``extra`` fields."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import service_jobs as jobs
import trio

import procsup
from procsup._logextra import encode_extra, record_extra

pytestmark = pytest.mark.usefixtures("each_start_method")


@pytest.fixture
def verbose_logger() -> Iterator[None]:
    """A named logger at DEBUG and another at ERROR, with the root at WARNING."""
    verbose = logging.getLogger("tests.service.verbose")
    quiet = logging.getLogger("tests.service.quiet")
    verbose.setLevel(logging.DEBUG)
    quiet.setLevel(logging.ERROR)
    try:
        yield
    finally:
        verbose.setLevel(logging.NOTSET)
        quiet.setLevel(logging.NOTSET)


def _messages(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == name]


async def test_captured_stdout_and_stderr_become_records_with_pid_and_slot(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with procsup.open_pool(
        jobs.print_in_init, idle=1, max_workers=1, capture_output=True
    ) as pool:
        pid = await pool.run(jobs.print_and_write, "A")
    out = _messages(caplog, "procsup.worker.stdout")
    err = _messages(caplog, "procsup.worker.stderr")
    prefix = f"[worker pid={pid}] "
    assert [r.getMessage() for r in out] == [
        prefix + "printed by the initializer",
        prefix + "print to stdout A",
        prefix + "os.write to fd 1 A",
        prefix + "partial line A",  # the unfinished last line, at exit
    ]
    assert [r.getMessage() for r in err] == [
        prefix + "print to stderr A",
        prefix + "os.write to fd 2 A",
    ]
    assert all(r.levelno == logging.INFO for r in out)
    assert all(r.levelno == logging.WARNING for r in err)
    assert all(r.worker_pid == pid and r.worker_slot == 0 for r in out + err)  # type: ignore[attr-defined]


async def test_without_capture_nothing_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with procsup.open_pool(idle=1, max_workers=1) as pool:
        await pool.run(jobs.print_and_write, "B")
    assert not [r for r in caplog.records if r.name.startswith("procsup.worker.")]


async def test_a_flood_of_output_is_bounded_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    total = 60_000
    async with procsup.open_pool(idle=1, max_workers=1, capture_output=True) as pool:
        await pool.wait_warm()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.run, jobs.flood_fd1, total)
            await trio.sleep(0.05)
            # Block the parent's loop: nothing is read, the channel fills up,
            # and the worker must drop lines instead of growing or blocking.
            trio_blocking_sleep(1.5)
    lines = _messages(caplog, "procsup.worker.stdout")
    notices = [r for r in caplog.records if "log records dropped" in r.getMessage()]
    assert notices, "the parent was not told that lines were dropped"
    dropped = sum(int(r.getMessage().split("] ")[1].split()[0]) for r in notices)
    assert dropped > 0
    assert len(lines) + dropped == total  # nothing lost silently
    assert len(lines) < total


def trio_blocking_sleep(seconds: float) -> None:
    import time

    time.sleep(seconds)


async def test_records_keep_the_parents_logger_levels_and_extras(
    caplog: pytest.LogCaptureFixture, verbose_logger: None
) -> None:
    # The root at WARNING: a DEBUG record passes only by its own logger's level.
    assert logging.getLogger().getEffectiveLevel() == logging.WARNING
    async with procsup.open_pool(idle=1, max_workers=1) as pool:
        pid = await pool.run(jobs.log_debug_and_extra)
    records = _messages(caplog, "tests.service.verbose")
    assert [r.getMessage() for r in records] == [
        f"[worker pid={pid}] debug from the worker",
        f"[worker pid={pid}] with extras",
    ]
    assert records[0].levelno == logging.DEBUG
    extra = records[1].__dict__
    assert (extra["user_id"], extra["ratio"], extra["flag"], extra["nothing"], extra["who"]) == (
        42,
        0.5,
        True,
        None,
        "me",
    )
    assert extra["thing"].startswith("<object object at ")  # not plain: its repr
    assert not _messages(caplog, "tests.service.quiet")


def test_extra_fields_cannot_forge_standard_attributes() -> None:
    text = encode_extra({"process": 1, "msg": "forged", "name": "x", "ok": 1}, standard=())
    assert record_extra(text, worker_pid=7) == {"ok": 1, "worker_pid": 7}
    assert record_extra("ok\0i" + "9" * 5000 + "\0bad\0") == {}  # too many digits, no type
    assert record_extra("not an identifier\0s1\0a\0x1") == {}  # unknown type letter
