"""Every procsup error pickles and unpickles to an equal one: errors cross
process boundaries (a pool's errors in a job's result, procsup serve's
queue, multiprocessing), and one that does not round-trip becomes a
confusing TypeError far from where it was raised."""

from __future__ import annotations

import pickle

import pytest

import procsup
from procsup import _errors


def _examples() -> list[BaseException]:
    start = procsup.WorkerStartError(
        "initializer raised RuntimeError: x", pid=12, phase="init", returncode=-9
    )
    start.remote_type, start.remote_traceback = "RuntimeError", "Traceback ..."
    memory = procsup.MemoryLimitError(
        "worker uses 900.0 MiB (pss), over the limit",
        pid=13,
        phase="job",
        returncode=-9,
        setting="memory_limit_mb=512",
    )
    memory.measured_mb, memory.limit_mb, memory.metric = 900.0, 512.0, "pss"
    timed_out = procsup.JobTimeoutError(
        "job did not finish within its timeout", pid=18, phase="job", setting="timeout=2s"
    )
    timed_out.timeout = 2.0
    return [
        procsup.ProcsupError("base"),
        procsup.UnsupportedPlatformError("Windows is not supported"),
        procsup.SerializationError("cannot be pickled"),
        procsup.PoolClosedError("the pool is closed"),
        procsup.DescriptorLimitError("too few descriptors", needed=4000, soft=1024, hard=2048),
        procsup.WorkerError("something", pid=1, phase="idle"),
        start,
        procsup.WorkerCrashedError("worker died during a job", pid=14, phase="job", returncode=3),
        procsup.WorkerClosedError("retired", pid=15, phase="shutdown"),
        procsup.WorkerUnresponsiveError(
            "did not answer a ping", pid=16, phase="job", setting="ping_timeout=10s"
        ),
        memory,
        timed_out,
        procsup.ProtocolError("worker broke the protocol: garbage", pid=17, phase="job"),
        procsup.NoWorkerAvailableError("no worker in 3 attempts", [start]),
        procsup.RemoteError("KeyboardInterrupt", "pressed", "Traceback ..."),
        procsup.RemoteTraceback("Traceback ..."),
    ]


def _state(exc: BaseException) -> tuple[object, ...]:
    attributes = {
        name: (_state(value) if isinstance(value, BaseException) else value)
        for name, value in vars(exc).items()
    }
    if isinstance(exc, procsup.NoWorkerAvailableError):
        attributes["start_errors"] = [_state(e) for e in exc.start_errors]
    return type(exc), str(exc), exc.args, attributes


@pytest.mark.parametrize("error", _examples(), ids=lambda e: type(e).__name__)
def test_every_error_round_trips_through_pickle(error: BaseException) -> None:
    copy = pickle.loads(pickle.dumps(error, pickle.HIGHEST_PROTOCOL))
    assert _state(copy) == _state(error)


def test_every_public_error_has_an_example() -> None:
    public = {
        name
        for name in procsup.__all__
        if isinstance(getattr(procsup, name), type)
        and issubclass(getattr(procsup, name), BaseException)
    }
    assert public == {type(e).__name__ for e in _examples()}
    assert public <= set(_errors.__all__)
