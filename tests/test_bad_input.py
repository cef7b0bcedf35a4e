"""Bad input to the public API: a clear TypeError or ValueError naming the
option, raised before any process starts.

"No process started" is checked two ways: no child process exists after the
call (psutil), and nothing tried to create one (``subprocess.Popen`` is
replaced by a tripwire for the duration of the call).
"""

from __future__ import annotations

import functools
import math
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import helpers
import pytest
from support import children

import procsup


@pytest.fixture
def no_spawn(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail the test if anything tries to start a process."""
    before = children()

    def tripwire(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"a process was started: {args[:1]}")

    monkeypatch.setattr(subprocess, "Popen", tripwire)
    yield
    assert children() == before


WORKER_CASES = [
    # (options, exception, phrase naming the option)
    ({"init_timeout": 0}, ValueError, "init_timeout"),
    ({"init_timeout": -1.0}, ValueError, "init_timeout"),
    ({"init_timeout": math.nan}, ValueError, "init_timeout"),
    ({"init_timeout": "10"}, TypeError, "init_timeout"),
    ({"init_timeout": None}, TypeError, "init_timeout"),
    ({"init_timeout": True}, TypeError, "init_timeout"),
    ({"max_jobs": 0}, ValueError, "max_jobs"),
    ({"max_jobs": -1}, ValueError, "max_jobs"),
    ({"max_jobs": 1.5}, TypeError, "max_jobs"),
    ({"max_jobs": "3"}, TypeError, "max_jobs"),
    ({"shutdown_timeout": -1}, ValueError, "shutdown_timeout"),
    ({"shutdown_timeout": "5"}, TypeError, "shutdown_timeout"),
    ({"ping_interval": 0}, ValueError, "ping_interval"),
    ({"ping_interval": -5}, ValueError, "ping_interval"),
    ({"ping_timeout": 0}, ValueError, "ping_timeout"),
    ({"ping_timeout": [1]}, TypeError, "ping_timeout"),
    ({"memory_warn_mb": 0}, ValueError, "memory_warn_mb"),
    ({"memory_warn_mb": "100"}, TypeError, "memory_warn_mb"),
    ({"memory_limit_mb": -1}, ValueError, "memory_limit_mb"),
    ({"memory_limit_mb": 0}, ValueError, "memory_limit_mb"),
    ({"memory_interval": 0}, ValueError, "memory_interval"),
    ({"cancel_grace": -0.5}, ValueError, "cancel_grace"),
    ({"max_message_bytes": 10}, ValueError, "max_message_bytes"),
    ({"max_message_bytes": 2.5e6}, TypeError, "max_message_bytes"),
    ({"start_method": "spawn"}, ValueError, "start_method"),
    ({"start_method": None}, ValueError, "start_method"),
    ({"preload": [1]}, TypeError, "preload"),
    ({"preload": "numpy"}, TypeError, "preload"),
    ({"no_such_option": 1}, TypeError, "no_such_option"),
]

INITIALIZER_CASES = [
    (42, TypeError, "initializer"),
    ("helpers", ValueError, "module:function"),
    (":noop", ValueError, "module:function"),
    ("no_such_module_xyz:init", ValueError, "no_such_module_xyz"),
    ("no_such_package_xyz.sub:init", ValueError, "no_such_package_xyz"),
    (lambda: None, TypeError, "cannot be pickled"),
    # pickles, but does not unpickle (its exception argument does not round-trip)
    (functools.partial(helpers.sleepy_init, helpers.Unpicklable(1, 2)), TypeError, "pickle"),
]


def _ids(cases: list[tuple[Any, ...]]) -> list[str]:
    return [
        f"{next(iter(c[0]))}={c[0][next(iter(c[0]))]!r}"
        if isinstance(c[0], dict)
        else repr(c[0])[:30]
        for c in cases
    ]


@pytest.mark.usefixtures("no_spawn")
@pytest.mark.parametrize(("options", "exc", "phrase"), WORKER_CASES, ids=_ids(WORKER_CASES))
async def test_open_worker_rejects(options: dict[str, Any], exc: type, phrase: str) -> None:
    with pytest.raises(exc, match=phrase):
        async with procsup.open_worker(**options):
            pytest.fail("must not start")


@pytest.mark.usefixtures("no_spawn")
@pytest.mark.parametrize(("options", "exc", "phrase"), WORKER_CASES, ids=_ids(WORKER_CASES))
async def test_open_pool_rejects_worker_options(
    options: dict[str, Any], exc: type, phrase: str
) -> None:
    with pytest.raises(exc, match=phrase):
        async with procsup.open_pool(**options):
            pytest.fail("must not start")


@pytest.mark.usefixtures("no_spawn", "no_cloudpickle")  # with it, a lambda goes by value
@pytest.mark.parametrize(
    ("initializer", "exc", "phrase"), INITIALIZER_CASES, ids=_ids(INITIALIZER_CASES)
)
async def test_bad_initializers(initializer: Any, exc: type, phrase: str) -> None:
    with pytest.raises(exc, match=phrase):
        async with procsup.open_worker(initializer):
            pytest.fail("must not start")
    with pytest.raises(exc, match=phrase):
        async with procsup.open_pool(initializer):
            pytest.fail("must not start")


POOL_CASES = [
    ({"idle": -1}, ValueError, "idle"),
    ({"idle": 1.5}, TypeError, "idle"),
    ({"idle": "4"}, TypeError, "idle"),
    ({"idle": None}, TypeError, "idle"),
    ({"max_workers": 0}, ValueError, "max_workers"),
    ({"max_workers": -2}, ValueError, "max_workers"),
    ({"max_workers": 2.0}, TypeError, "max_workers"),
    ({"idle": 4, "max_workers": 2}, ValueError, "max_workers"),
    ({"max_concurrent_starts": 0}, ValueError, "max_concurrent_starts"),
    ({"max_acquire_attempts": 0}, ValueError, "max_acquire_attempts"),
    ({"max_acquire_attempts": None}, TypeError, "max_acquire_attempts"),
    ({"acquire_timeout": 0}, ValueError, "acquire_timeout"),
    ({"acquire_timeout": -1}, ValueError, "acquire_timeout"),
    ({"acquire_timeout": "1s"}, TypeError, "acquire_timeout"),
    ({"load": 0.5}, TypeError, "load"),
    ({"load_threshold": 0}, ValueError, "load_threshold"),
    ({"load_threshold": 1.5}, ValueError, "load_threshold"),
    ({"load_interval": 0}, ValueError, "load_interval"),
    ({"backoff_base": -1}, ValueError, "backoff_base"),
    ({"backoff_cap": 0}, ValueError, "backoff_cap"),
    ({"on_event": "print"}, TypeError, "on_event"),
]


@pytest.mark.usefixtures("no_spawn")
@pytest.mark.parametrize(("options", "exc", "phrase"), POOL_CASES, ids=_ids(POOL_CASES))
async def test_open_pool_rejects(options: dict[str, Any], exc: type, phrase: str) -> None:
    with pytest.raises(exc, match=phrase):
        async with procsup.open_pool(**options):
            pytest.fail("must not start")


# -- jobs: checked before anything is sent, and the worker stays usable ----------


async def test_a_non_callable_job_is_a_type_error_before_anything_is_sent() -> None:
    async with procsup.open_worker(max_jobs=None) as worker:
        with pytest.raises(TypeError, match="callable"):
            await worker.run(42)  # type: ignore[arg-type]
        assert await worker.run(helpers.add, 1, 2) == 3


@pytest.mark.usefixtures("no_cloudpickle")  # with it, a lambda goes by value
async def test_unpicklable_job_or_arguments_are_a_serialization_error() -> None:
    async with procsup.open_worker(max_jobs=None) as worker:
        with pytest.raises(procsup.SerializationError, match="cannot be pickled"):
            await worker.run(lambda: None)
        with pytest.raises(procsup.SerializationError, match="cannot be pickled"):
            await worker.run(helpers.add, threading.Lock(), 1)
        assert await worker.run(helpers.add, 1, 2) == 3


@pytest.mark.usefixtures("no_spawn")
async def test_a_non_callable_pool_job_starts_nothing() -> None:
    async with procsup.open_pool(idle=0) as pool:
        with pytest.raises(TypeError, match="callable"):
            await pool.run("helpers:noop")  # type: ignore[arg-type]
