"""The process limits a pool needs in the parent: file descriptors.

Each worker holds four descriptors in the parent (its jobs socket, its
control socket, a pidfd or a pipe that reports its exit, and its start mark), and a starting
one two more for a moment. The usual default soft ``RLIMIT_NOFILE`` is 1,024:
about 240 workers. A pool raises the soft limit to the hard one when it
needs more, and refuses to open, naming the limit, when even that is short.
"""

from __future__ import annotations

import errno
import os
import resource

from ._errors import DescriptorLimitError, WorkerStartError

__all__ = ["PER_WORKER", "ensure_descriptors", "start_failure"]

PER_WORKER = 4  # jobs socket, control socket, exit watch, start mark (procsup._startmark)
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


def start_failure(exc: BaseException) -> WorkerStartError | None:
    """The start failure a resource error of a worker's start is, naming the
    limit it ran into (``None``: ``exc`` is not one, let it propagate).

    Descriptors (EMFILE, ENFILE), processes and threads (EAGAIN from fork,
    ``can't start new thread``), memory (ENOMEM): each is a failed start,
    backed off and counted by a pool like any other, never its crash.
    """
    if isinstance(exc, WorkerStartError):
        return exc
    if isinstance(exc, OSError):
        what = f"could not start a worker process: {exc}"
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            limit = "the system's file table" if exc.errno == errno.ENFILE else "RLIMIT_NOFILE"
            what += f" (out of file descriptors: {limit}, soft {soft}, hard {hard})"
        elif exc.errno == errno.EAGAIN:
            what += f" (out of processes or threads: RLIMIT_NPROC={_nproc()})"
        elif exc.errno == errno.ENOMEM:
            what += " (out of memory)"
        return WorkerStartError(what, pid=None, phase="init")
    if isinstance(exc, RuntimeError) and "can't start new thread" in str(exc):
        return WorkerStartError(
            f"could not start a worker process: {exc} (out of threads: "
            f"RLIMIT_NPROC={_nproc()}, or the system's threads-max)",
            pid=None,
            phase="init",
        )
    return None


def _nproc() -> str:
    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    return "unlimited" if soft == resource.RLIM_INFINITY else str(soft)
