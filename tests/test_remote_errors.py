"""Whatever a job returns or raises, and whatever unpickling it does, the
caller gets the job's own Exception (when it is one and rebuilds cleanly) or
a typed procsup error; the pool and the other callers never notice.

The cases of CPython's test_deadlock.py, pebble's frozen error and trio's
Cancelled, each under both start methods, each beside an innocent job that
must finish untouched.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import badjobs
import helpers
import pytest
import trio

import procsup

pytestmark = pytest.mark.usefixtures("each_start_method")


async def _a_pickled_cancelled() -> bytes:
    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            await trio.sleep_forever()
        except trio.Cancelled as cancelled:
            data = pickle.dumps(cancelled)
            raise
    assert scope.cancelled_caught
    return data


async def _beside_an_innocent(fn: Callable[..., Any], *args: Any) -> BaseException | object:
    """Run ``fn(*args)`` in a pool while an innocent job runs beside it; return
    what the call raised (or returned), after checking that the innocent job
    finished and the pool still serves."""
    outcome: BaseException | object = None
    innocent: list[str] = []
    async with procsup.open_pool(idle=2, max_workers=3) as pool:
        await pool.wait_warm()
        async with trio.open_nursery() as nursery:

            async def run_innocent() -> None:
                innocent.append(await pool.run(helpers.sleep_for, 0.5))

            nursery.start_soon(run_innocent)
            try:
                outcome = await pool.run(fn, *args)
            except BaseException as exc:  # noqa: BLE001 -- what the caller got is the subject
                outcome = exc
        assert innocent == ["slept"]
        assert await pool.run(helpers.add, 1, 2) == 3
        assert pool.statistics().health == "ok"
    return outcome


def _check_remote(got: object, type_name: str, message: str, where: str) -> None:
    assert isinstance(got, procsup.RemoteError), repr(got)
    assert got.type_name == type_name
    assert got.message == message
    assert where in got.remote_traceback
    assert type_name in str(got)
    assert isinstance(got.__cause__, procsup.RemoteTraceback)


@pytest.mark.parametrize(
    ("kind", "type_name", "message"),
    [
        ("KeyboardInterrupt", "KeyboardInterrupt", "pressed in the job"),
        ("GeneratorExit", "GeneratorExit", "closed in the job"),
        ("CustomBaseError", "badjobs.CustomBaseError", "custom in the job"),
    ],
)
async def test_a_base_exception_from_a_job_is_a_remote_error(
    kind: str, type_name: str, message: str
) -> None:
    got = await _beside_an_innocent(badjobs.raise_base, kind)
    _check_remote(got, type_name, message, "raise_base")


async def test_a_raised_trio_cancelled_is_a_remote_error() -> None:
    got = await _beside_an_innocent(badjobs.raise_unpickled, await _a_pickled_cancelled())
    _check_remote(got, "trio.Cancelled", str(pickle.loads(await _a_pickled_cancelled())), "")


async def test_a_returned_trio_cancelled_is_a_value_never_raised() -> None:
    # Not a regression (it held before): the contract beside the raised one.
    got = await _beside_an_innocent(badjobs.return_unpickled, await _a_pickled_cancelled())
    assert type(got) is trio.Cancelled


@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt"])
async def test_a_result_whose_unpickling_raises_is_a_serialization_error(kind: str) -> None:
    got = await _beside_an_innocent(badjobs.return_exploding, kind)
    assert isinstance(got, procsup.SerializationError), repr(got)
    assert kind in str(got)


@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt"])
async def test_an_exception_whose_unpickling_raises_is_a_remote_error(kind: str) -> None:
    got = await _beside_an_innocent(badjobs.raise_exploding, kind)
    _check_remote(
        got, "badjobs.ExplodingError", f"explodes in the parent with {kind}", "raise_exploding"
    )


async def test_a_frozen_exception_is_a_remote_error() -> None:
    # Raising it would fail in contextlib (which sets __traceback__), far from here.
    got = await _beside_an_innocent(badjobs.raise_frozen)
    _check_remote(got, "badjobs.FrozenError", "", "raise_frozen")


async def test_an_ordinary_exception_still_arrives_as_itself() -> None:
    got = await _beside_an_innocent(helpers.raise_value_error, "bad input")
    assert type(got) is ValueError
    assert str(got) == "bad input"
    assert isinstance(got.__cause__, procsup.RemoteTraceback)


@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt"])
async def test_a_result_whose_pickling_raises_in_the_worker_is_a_serialization_error(
    kind: str,
) -> None:
    got = await _beside_an_innocent(badjobs.return_unpicklable_base, kind)
    assert isinstance(got, procsup.SerializationError), repr(got)
    assert "_RaisesWhenPickled" in str(got)


async def test_an_exception_whose_str_and_pickling_raise_is_a_remote_error() -> None:
    got = await _beside_an_innocent(badjobs.raise_hostile)
    _check_remote(got, "badjobs.HostileError", "<unprintable HostileError>", "raise_hostile")
