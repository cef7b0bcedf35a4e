"""How often a pool pings its idle workers: at a bounded rate in all.

A ping costs the parent 0.3 to 0.8 ms of CPU on the 2-core machine (the
timer's wakeup, the send, the answer's read; measured in W7, see
docs/pool.rst): at the default ``ping_interval`` of 5 s, 1,000 idle workers
would cost 6-16% of a core for nothing but pings. So a pool pings its idle
workers at most ``IDLE_PINGS_PER_SECOND`` times a second in all: in a pool
with more than ``ping_interval * IDLE_PINGS_PER_SECOND`` idle workers, each
idle one is pinged every ``idle / IDLE_PINGS_PER_SECOND`` seconds instead. A
busy worker is pinged every ``ping_interval``: one that takes a job after a
longer gap is pinged ``ping_interval`` after the job starts.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["IDLE_PINGS_PER_SECOND", "IdlePings"]

# 5: at most 0.4% of a core in pings even where a ping costs 0.8 ms; an idle
# worker that hangs is found when it takes a job (pinged every ping_interval
# from the job's start), or after idle / 5 s (200 s for 1,000 idle).
IDLE_PINGS_PER_SECOND = 5


class IdlePings:
    """A pool's share of ping time for its idle workers."""

    __slots__ = ("_idle_count",)

    def __init__(self, idle_count: Callable[[], int]) -> None:
        self._idle_count = idle_count  # the pool's idle workers now

    def gap(self, ping_interval: float) -> float:
        """Seconds from an idle worker's answered ping to its next one."""
        return max(ping_interval, self._idle_count() / IDLE_PINGS_PER_SECOND)
