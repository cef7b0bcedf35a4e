"""The process limits a pool needs in the parent: file descriptors.

Each worker holds three descriptors in the parent (its jobs socket, its
control socket, and a pidfd or a pipe that reports its exit), and a starting
one two more for a moment. The usual default soft ``RLIMIT_NOFILE`` is 1,024:
about 300 workers. A pool raises the soft limit to the hard one when it
needs more, and refuses to open, naming the limit, when even that is short.
"""

from __future__ import annotations

import os
import resource

from ._errors import DescriptorLimitError

__all__ = ["PER_WORKER", "ensure_descriptors"]

PER_WORKER = 3  # jobs socket, control socket, exit watch
PER_START = 2  # the child's socket ends, until the process has them
_HEADROOM = 64  # the event loop, a fork-server template, logging, the user's own


def ensure_descriptors(workers: int, starting: int) -> None:
    """Make room for ``workers`` workers, ``starting`` of them at once.

    Raises:
        DescriptorLimitError: not even the hard limit leaves room.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = _open_count() + PER_WORKER * workers + PER_START * starting + _HEADROOM
    if needed <= soft:
        return
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise DescriptorLimitError(
            f"a pool of {workers} workers needs about {needed} file descriptors in this "
            f"process, over its hard limit RLIMIT_NOFILE={hard} (soft {soft}): raise the "
            "hard limit (ulimit -Hn as root, LimitNOFILE= in a systemd unit, --ulimit "
            "nofile= for a container) or use fewer workers",
            needed=needed,
            soft=soft,
            hard=hard,
        )
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY else hard, hard)
    )


def _open_count() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc: count what is open below the soft limit would be slow
        return _HEADROOM
