"""The load-based idle target: a pure function, so it can be reasoned about
and property-tested apart from the pool."""

from __future__ import annotations

import math

__all__ = ["idle_target"]


def idle_target(idle: int, load: float, threshold: float) -> int:
    """How many idle (or warming) workers to keep at a given load.

    ``idle`` at zero load, shrinking linearly as ``load`` rises towards
    ``threshold``, and ``0`` at or above it. Never negative, never above
    ``idle``, and never rising when load rises.

    Args:
        idle: the configured target at zero load (``>= 0``).
        load: current load, ``0.0`` to ``1.0`` (clamped; NaN counts as full).
        threshold: the load at which warming stops, in ``(0, 1]``.
    """
    if idle <= 0:
        return 0
    if math.isnan(load) or load >= threshold:
        return 0
    if load <= 0.0:
        return idle
    return min(idle, math.ceil(idle * (1.0 - load / threshold)))
