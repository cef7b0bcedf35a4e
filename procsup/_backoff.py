"""Crash-loop backoff: a pure schedule, with the randomness passed in."""

from __future__ import annotations

__all__ = ["backoff_delay"]


def backoff_delay(failures: int, *, base: float, cap: float, jitter: float) -> float:
    """Seconds to wait before the next start after ``failures`` consecutive
    start failures: ``base * 2**(failures-1)``, capped at ``cap``, scaled by
    ``jitter`` in ``[0.5, 1.0]`` so that pools restarted together spread out.
    Zero failures means no wait.
    """
    if failures <= 0:
        return 0.0
    raw = base * 2.0 ** min(failures - 1, 62)
    return min(cap, raw) * (0.5 + 0.5 * min(max(jitter, 0.0), 1.0))
