"""What one acquirer may still spend while it waits for a worker: the pool's
acquisitions (:mod:`procsup._pool`) and each lane of ``pool.map``
(:mod:`procsup._map`) keep one."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import trio

from ._errors import NoWorkerAvailableError

if TYPE_CHECKING:
    from ._options import PoolOptions


class _Budget:
    """What one acquirer may still spend: ``max_acquire_attempts`` failed
    rounds and ``acquire_timeout`` seconds of waiting, across every worker a
    job is offered to (a job re-dispatched after its worker died before
    beginning it keeps spending the same budget)."""

    __slots__ = ("_max_attempts", "_timeout", "attempts", "errors", "left")

    def __init__(self, options: PoolOptions) -> None:
        self._max_attempts = options.max_acquire_attempts
        self._timeout = options.acquire_timeout
        self.left = math.inf if options.acquire_timeout is None else options.acquire_timeout
        self.attempts = 0
        self.errors: list[BaseException] = []

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Spend the wait inside the block; leave it when the time is up."""
        if self.left == math.inf:  # no acquire_timeout: nothing to time (no scope)
            yield
            return
        began = trio.current_time()
        try:
            with trio.move_on_after(self.left):
                yield
        finally:
            self.left = max(self.left - (trio.current_time() - began), 0.0)

    def failed(self, error: BaseException | None) -> None:
        """A failed round: one attempt used."""
        self.attempts += 1
        if error is not None:
            self.errors.append(error)
        self.check()

    def check(self) -> None:
        if self.attempts >= self._max_attempts:
            raise NoWorkerAvailableError(
                f"no worker after {self.attempts} attempts (max_acquire_attempts="
                f"{self._max_attempts})",
                self.errors,
            )

    def timed_out(self) -> NoWorkerAvailableError:
        return NoWorkerAvailableError(
            f"no worker within acquire_timeout={self._timeout:g}s", self.errors
        )
