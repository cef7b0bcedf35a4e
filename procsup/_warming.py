"""The pool's bookkeeping of starts: who may warm now, and how starts fare.

Pure bookkeeping, with time and randomness passed in: no processes, no tasks.
"""

from __future__ import annotations

import math
import random

import trio

from ._backoff import backoff_delay

__all__ = ["StartRecord", "StartSlots"]


class StartSlots:
    """At most ``size`` starts warm at once; the others queue, first come
    first served. Unlike a semaphore, the set of starts holding a slot is
    known the moment a slot changes hands: an acquirer's attempt depends on
    exactly those."""

    def __init__(self, size: int) -> None:
        self._free = size  # slots nobody holds; > 0 only while nothing is queued
        self._queued: dict[int, trio.Event] = {}  # in arrival order: each one's wakeup
        self.holders: set[int] = set()  # the starts warming now; never more than size

    def request(self, seq: int) -> None:
        """Take a slot for start ``seq`` now, or queue it."""
        if self._free > 0:
            self._free -= 1
            self.holders.add(seq)
        else:
            self._queued[seq] = trio.Event()

    async def wait(self, seq: int) -> None:
        """Until queued start ``seq`` holds a slot."""
        event = self._queued.get(seq)
        if event is not None:
            await event.wait()

    def release(self, seq: int) -> None:
        """Start ``seq`` settled (or gave up): its slot, or its place in the
        queue, goes to the next. Idempotent."""
        if self._queued.pop(seq, None) is not None or seq not in self.holders:
            return
        self.holders.discard(seq)
        if self._queued:
            successor = next(iter(self._queued))
            self.holders.add(successor)
            self._queued.pop(successor).set()
        else:
            self._free += 1


class StartRecord:
    """How the pool's starts fared, and the backoff that follows failures."""

    def __init__(self, backoff_base: float, backoff_cap: float) -> None:
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._rng = random.Random()
        self.spawned = 0  # processes that came to exist (a failed spawn is only a failure)
        self.failures = 0
        self.successes = 0
        self.consecutive_failures = 0  # since the last success; > 0: the pool is degraded
        self._streak_before = 0  # consecutive_failures when the last success reset it,
        # until a job completes (confirmed): what a lost start gives back
        self.last_error: BaseException | None = None  # the newest failure
        self.backoff_until = -math.inf  # before then, no start but a probe (see Pool._rebalance)

    def succeeded(self) -> None:
        self.successes += 1
        self._streak_before = self.consecutive_failures
        self.consecutive_failures = 0
        self.backoff_until = -math.inf

    def lost(self, error: BaseException, now: float) -> None:
        """A start that got warm and died before its first job: a failure,
        and its success taken back (so workers that always die right after
        warming add up to a growing streak and backoff, not to "ok")."""
        self.successes -= 1
        self.consecutive_failures = max(self.consecutive_failures, self._streak_before)
        self.failed(error, now)

    def confirmed(self) -> None:
        """A job completed: the starts before it were real successes."""
        self._streak_before = 0

    def failed(self, error: BaseException, now: float) -> None:
        self.failures += 1
        self.consecutive_failures += 1
        self.last_error = error
        delay = backoff_delay(
            self.consecutive_failures,
            base=self._backoff_base,
            cap=self._backoff_cap,
            jitter=self._rng.random(),
        )
        self.backoff_until = now + delay
