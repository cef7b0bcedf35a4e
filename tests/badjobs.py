"""Jobs that send back what no caller expects: BaseExceptions, values and
exceptions whose unpickling explodes, exceptions that refuse new attributes.
Workers import this module by name (apart from helpers: dataclasses costs a
worker's start milliseconds)."""

from __future__ import annotations

import dataclasses
from typing import Any


class CustomBaseError(BaseException):
    pass


def raise_base(kind: str) -> None:
    """Raise a BaseException that is not an Exception."""
    errors: dict[str, BaseException] = {
        "KeyboardInterrupt": KeyboardInterrupt("pressed in the job"),
        "GeneratorExit": GeneratorExit("closed in the job"),
        "CustomBaseError": CustomBaseError("custom in the job"),
    }
    raise errors[kind]


def raise_unpickled(data: bytes) -> None:
    """Raise what ``data`` unpickles to (e.g. a trio.Cancelled made in the test)."""
    import pickle

    raise pickle.loads(data)


def return_unpickled(data: bytes) -> Any:
    import pickle

    return pickle.loads(data)


def _explode_in_parent(kind: str) -> object:
    """Unpickling hook: raises ``kind`` outside a worker, and only there."""
    import procsup

    if procsup.in_worker():
        return Exception("rebuilt in the worker")
    raise {"SystemExit": SystemExit(3), "KeyboardInterrupt": KeyboardInterrupt()}[kind]


class ExplodesInParent:
    """A value whose unpickling in the parent raises SystemExit or KeyboardInterrupt."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __reduce__(self) -> tuple[object, ...]:
        return (_explode_in_parent, (self.kind,))


class ExplodingError(Exception):
    """An exception whose unpickling in the parent raises SystemExit or KeyboardInterrupt."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"explodes in the parent with {kind}")
        self.kind = kind

    def __reduce__(self) -> tuple[object, ...]:
        return (_explode_in_parent, (self.kind,))


def return_exploding(kind: str) -> ExplodesInParent:
    return ExplodesInParent(kind)


def raise_exploding(kind: str) -> None:
    raise ExplodingError(kind)


@dataclasses.dataclass(frozen=True)
class FrozenError(Exception):
    """pebble's test_process_pool_frozen_error: no attribute may be set."""


def raise_frozen() -> None:
    raise FrozenError()


class _RaisesWhenPickled:
    """A value whose pickling (in the worker) raises ``kind``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __reduce__(self) -> tuple[object, ...]:
        raise {"SystemExit": SystemExit(4), "KeyboardInterrupt": KeyboardInterrupt()}[self.kind]


def return_unpicklable_base(kind: str) -> _RaisesWhenPickled:
    return _RaisesWhenPickled(kind)


class HostileError(Exception):
    """An exception whose str() raises SystemExit and whose pickling raises
    KeyboardInterrupt, both in the worker."""

    def __str__(self) -> str:
        raise SystemExit(5)

    def __reduce__(self) -> tuple[object, ...]:
        raise KeyboardInterrupt


def raise_hostile() -> None:
    raise HostileError
