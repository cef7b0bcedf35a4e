"""How a worker process comes to exist: the spawners, and the choice of one.

The supervisor talks to a :class:`Spawner` and the
:class:`~procsup._process.ChildProcess` it returns, and to nothing else about
processes: the fork-server backend plugs in here without the supervisor
changing.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

import trio

from ._child import importing_parent_main
from ._errors import UnsupportedPlatformError
from ._learn import LearnedModules
from ._options import WorkerOptions
from ._process import ChildProcess, _ExecChild, parent_main_reference

__all__ = ["ExecSpawner", "Spawner", "make_spawner", "open_spawner"]

# Small enough to embed in argv; it runs before anything of procsup is imported.
_BOOTSTRAP = (
    "import sys;sys.path[:]={path!r};from procsup._child import main;"
    "main({fd},{control_fd},{main!r},{mark_fd})"
)


class Spawner(Protocol):
    """Starts worker processes that run :func:`procsup._child.main` on the
    inherited socket ends ``fd`` (jobs) and ``control_fd`` (control), and
    the start mark's memory ``mark_fd`` (-1: none; see procsup._startmark)."""

    async def spawn(self, fd: int, control_fd: int, mark_fd: int = -1) -> ChildProcess: ...

    async def aclose(self) -> None: ...


class ExecSpawner:
    """Starts each worker as a fresh ``sys.executable`` in its own process group.

    The child gets the parent's ``sys.path`` and working directory, so the
    user's own modules import the same way in both.
    """

    def __init__(self, executable: str | None = None) -> None:
        self.executable = executable or sys.executable

    async def spawn(self, fd: int, control_fd: int, mark_fd: int = -1) -> ChildProcess:
        bootstrap = _BOOTSTRAP.format(
            path=sys.path,
            fd=fd,
            control_fd=control_fd,
            main=parent_main_reference(),
            mark_fd=mark_fd,
        )
        argv = [self.executable, "-c", bootstrap]
        fds = (fd, control_fd) if mark_fd < 0 else (fd, control_fd, mark_fd)
        # Popen blocks until exec succeeds; keep that off the event loop. Not
        # abandonable: a process started by the thread must reach its owner.
        return _ExecChild(await trio.to_thread.run_sync(_popen, argv, fds))

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def _popen(argv: list[str], fds: tuple[int, ...]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, pass_fds=fds, stdin=subprocess.DEVNULL, process_group=0)


def make_spawner(options: WorkerOptions, learned: LearnedModules | None = None) -> Spawner:
    """The spawner for ``options.start_method`` (``"auto"``: as for one worker).
    A fork server's template imports ``learned`` (a pool's job modules) too;
    exec workers get them in INIT (see :func:`procsup._worker.supervise`)."""
    if sys.platform == "win32":
        raise UnsupportedPlatformError(
            "procsup supervises POSIX processes (process groups, socketpairs, "
            "pidfds); Windows is not supported"
        )
    if importing_parent_main():
        raise RuntimeError(
            "a worker imported your main module to find a job defined in it, and the "
            "module started workers while being imported: start them only under "
            "'if __name__ == \"__main__\":'"
        )
    if options.chosen(pool=False).start_method == "forkserver":
        from ._forkserver import ForkServerSpawner

        return ForkServerSpawner(
            preload=options.preload,
            start_timeout=options.init_timeout,
            stop_timeout=options.shutdown_timeout,
            learned=learned,
        )
    return ExecSpawner()


@asynccontextmanager
async def open_spawner(
    options: WorkerOptions, learned: LearnedModules | None = None
) -> AsyncIterator[Spawner]:
    """The spawner for ``options.start_method`` (see :func:`make_spawner`),
    closed (a fork server's template stopped and reaped) when the block
    exits, however it exits."""
    spawner = make_spawner(options, learned)
    try:
        yield spawner
    finally:
        with trio.CancelScope(shield=True):
            await spawner.aclose()
