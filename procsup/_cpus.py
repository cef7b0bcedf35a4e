"""How many CPUs this process may use: its affinity mask, then the CPU
quota of its cgroup (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), which
``os.cpu_count()`` knows nothing of (a container limited to 2 CPUs on a
64-CPU host would get 64 workers)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["available_cpus"]

_CGROUP_ROOT = Path("/sys/fs/cgroup")
_PROC_CGROUP = Path("/proc/self/cgroup")


def available_cpus() -> int:
    """The number of CPUs this process may use, at least 1.

    The CPUs in its affinity mask (``os.sched_getaffinity``; the CPU count
    where there is none), capped by the CPU quota of its cgroup and of every
    cgroup above it -- cgroup v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us`` -- rounded up (a quota of 1.5 CPUs gives 2).
    Read anew at each call. The default of ``open_pool(max_workers=...)``.
    """
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        affinity = os.cpu_count() or 1
    return _available_cpus(affinity, _CGROUP_ROOT, _PROC_CGROUP)


def _available_cpus(affinity: int, cgroup_root: Path, proc_cgroup: Path) -> int:
    """``available_cpus`` with the affinity count, the cgroup file system's
    mount point and the process's ``/proc/<pid>/cgroup`` given (tests pass a
    fake tree)."""
    quota = _cgroup_quota(cgroup_root, proc_cgroup)
    cpus = affinity if quota is None else min(affinity, math.ceil(quota))
    return max(1, cpus)


def _cgroup_quota(root: Path, proc_cgroup: Path) -> float | None:
    """The smallest CPU quota (in CPUs) on the process's cgroup path, or
    None when there is none (or nothing can be read)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # v2: "0::/path"
            quotas += _quotas(root, path, _v2_quota)
        elif "cpu" in controllers.split(","):  # v1: "4:cpu,cpuacct:/path"
            for mount in (root / controllers, root / "cpu", root / "cpu,cpuacct"):
                if mount.is_dir():
                    quotas += _quotas(mount, path, _v1_quota)
                    break
    return min(quotas, default=None)


def _quotas(mount: Path, path: str, read: Callable[[Path], float | None]) -> list[float]:
    """The quotas found in ``mount/path`` and each directory above it, up to
    ``mount``. Inside a container the path may name the host's cgroup,
    which is not there: then only the mount's own files count."""
    directory = mount / path.strip("/")
    if not directory.is_dir():
        directory = mount
    found = []
    while True:
        quota = read(directory)
        if quota is not None:
            found.append(quota)
        if directory == mount or mount not in directory.parents:
            return found
        directory = directory.parent


def _v2_quota(directory: Path) -> float | None:
    """``cpu.max``: ``"QUOTA PERIOD"`` in microseconds, or ``"max PERIOD"``."""
    try:
        fields = (directory / "cpu.max").read_text().split()
        if fields[0] == "max":
            return None
        return _ratio(int(fields[0]), int(fields[1]))
    except (OSError, ValueError, IndexError):
        return None


def _v1_quota(directory: Path) -> float | None:
    """``cpu.cfs_quota_us`` (-1: none) over ``cpu.cfs_period_us``."""
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return _ratio(quota, period)


def _ratio(quota: int, period: int) -> float | None:
    return quota / period if quota > 0 and period > 0 else None
