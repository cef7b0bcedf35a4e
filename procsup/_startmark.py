"""Whether a worker began a job: a word of memory shared with the worker.

The worker stores a job's id there when it takes the job from its channel,
before any of the job's code runs (unpickling its arguments included); the
parent reads it only when the worker ended while the job was out. A job
whose id is not there never started: running it elsewhere runs it at most
once. A job's round trip pays nothing for it (one store in the worker, no
system call on either side); a worker's start pays for one memfd, which the
worker maps and the parent keeps open (one descriptor per worker, read with
``pread`` only after the worker has ended).

The alternative, a STARTED frame from the worker, costs a write in the
worker and a wakeup of the parent's reader per job: ``benchmarks`` numbers
are in the issue 10 notes (docs/robustness.rst, "A job that never started").
"""

from __future__ import annotations

import os
import struct

__all__ = ["StartMark"]

_WORD = struct.Struct("=q")  # the worker writes it through a memoryview cast to "q"


class StartMark:
    """The id of the last job one worker began (0: none yet).

    Raises:
        OSError: no descriptor or memory for it (a failed start).
    """

    __slots__ = ("_fd",)

    def __init__(self) -> None:
        # Not named procsup-*: it is no payload segment of procsup._shm's.
        fd = os.memfd_create("worker-start-mark", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, _WORD.size)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd  # -1 once closed

    @property
    def child_fd(self) -> int:
        """The descriptor the spawner passes on to the worker."""
        return self._fd

    def last(self) -> int:
        """The id of the last job the worker took (0: none). Job ids only
        grow, so every job of this worker with a higher id never began."""
        return self._read()

    def began_any(self) -> bool:
        """The worker took a job at some point."""
        return self._read() != 0

    def _read(self) -> int:
        return int(_WORD.unpack(os.pread(self._fd, _WORD.size, 0))[0])

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
