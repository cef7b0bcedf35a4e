"""Process memory facts, from psutil."""

from __future__ import annotations

import psutil

__all__ = ["sample_memory_mb"]

_MIB = 1024 * 1024


def sample_memory_mb(pid: int) -> tuple[float, str] | None:
    """(MiB, metric) for one process, or None once it is gone.

    Prefers PSS (Linux: shared pages counted fairly), then USS (macOS), and
    falls back to RSS where neither can be read.
    """
    try:
        proc = psutil.Process(pid)
        try:
            full = proc.memory_full_info()
        except (psutil.AccessDenied, NotImplementedError):
            return proc.memory_info().rss / _MIB, "rss"
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    pss = getattr(full, "pss", None)
    if pss is not None:
        return pss / _MIB, "pss"
    return full.uss / _MIB, "uss"
