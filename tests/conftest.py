"""Shared fixtures. Every test runs under a guard that fails it if it leaves a
child process (zombies included) or an open file descriptor behind."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
# Jobs and initializers live in tests/helpers.py; workers import it by name.
sys.path.insert(0, str(HERE))

from support import describe_children  # noqa: E402 -- importable only now

# A run started in the background by a shell without job control inherits
# SIGINT ignored, and so would every parent script a test Ctrl-C's: restore
# Python's default, which the children then start with.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-long", action="store_true", help="run the long chaos schedule (nox -s chaos)"
    )
    parser.addoption("--chaos-seed", type=int, default=None, help="replay a chaos run's seed")
    parser.addoption("--soak", action="store_true", help="run the queue soak (nox -s soak)")
    parser.addoption(
        "--chaos-seconds", type=float, default=None, help="duration of the long chaos run"
    )


def _open_fds() -> dict[int, str]:
    fds: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the listing's own descriptor, closed already
    return fds


@pytest.fixture(params=["exec", "forkserver"])
def start_method(request: pytest.FixtureRequest) -> str:
    """A test that takes ``start_method`` runs once per start method."""
    return str(request.param)


@pytest.fixture(params=["exec", "forkserver"])
def each_start_method(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test once per start method, as the default one (the way
    CPython's and pebble's suites run under every start method)."""
    monkeypatch.setenv("PROCSUP_START_METHOD", str(request.param))
    return str(request.param)


@pytest.fixture
def no_cloudpickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if cloudpickle were not installed (in this process: an exec'd
    worker could still import it, but nothing sent by reference asks it to)."""
    monkeypatch.setitem(sys.modules, "cloudpickle", None)


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail the test if it leaves a child process or a file descriptor open."""
    fds_before = _open_fds()
    children_before = set(describe_children())
    yield
    # No grace period: procsup promises every child is reaped before the
    # call that ended it returns.
    leftover = {p: d for p, d in describe_children().items() if p not in children_before}
    for pid in leftover:
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    new_fds = {fd: target for fd, target in _open_fds().items() if fds_before.get(fd) != target}
    problems = []
    if leftover:
        problems.append(f"child processes left behind: {leftover}")
    if new_fds:
        problems.append(f"file descriptors left open: {new_fds}")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Any]:
    """A real redis-server on a unix socket in ``tmp_path`` (tests/redis_helpers.py)."""
    from redis_helpers import redis_server_for

    server = redis_server_for(tmp_path)
    try:
        yield server
    finally:
        server.kill()
