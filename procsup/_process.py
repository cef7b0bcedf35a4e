"""One worker process, as the supervisor sees it: how its end is observed,
and how it and its process group are killed."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from functools import partial
from typing import Protocol

import trio

__all__ = ["ChildProcess", "kill_process", "parent_main_reference", "pidfd_ready"]


class ChildProcess(Protocol):
    """One worker process, as the supervisor sees it."""

    @property
    def pid(self) -> int: ...

    async def wait(self) -> int:
        """Wait for the process to end, kill what is left of its process group,
        reap it, and return a :mod:`subprocess`-style return code. Idempotent."""
        ...

    def kill(self) -> None:
        """SIGKILL the process and its process group. Harmless once reaped."""
        ...

    def has_ended(self) -> bool:
        """True once the process has ended, reaped (or its end reported) or
        not; never blocks. False also when there is no way to tell yet."""
        ...


def kill_process(pid: int) -> None:
    """SIGKILL a worker and the process group it leads, ignoring what is
    already gone. Both: a job may move its worker into another group, and
    the group still holds the job's own subprocesses."""
    for kill, target in ((os.kill, pid), (os.killpg, pid)):
        try:
            kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def parent_main_reference() -> str:
    """Where this process's ``__main__`` comes from, for a worker to import it
    when it unpickles a job or initializer defined there: ``"module:NAME"``
    (``python -m``), ``"file:PATH"`` (a script), or ``""`` (``-c``, a REPL).

    Also lets results and exceptions of classes defined in ``__main__`` travel
    back: the worker defines them in ``__mp_main__``, an alias here.
    """
    main = sys.modules.get("__main__")
    if main is None:
        return ""
    sys.modules.setdefault("__mp_main__", main)
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    if name and name != "__main__":
        return f"module:{name}"
    path = getattr(main, "__file__", None)
    # `python - < script` names its main "<stdin>", which is no file to run
    return f"file:{os.path.abspath(path)}" if isinstance(path, str) and os.path.isfile(path) else ""


class _ExecChild:
    """A direct child: waited on with a pidfd where there is one."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self._pidfd = _open_pidfd(popen.pid)
        self._returncode: int | None = None
        self._exited: trio.Event | None = None  # without a pidfd: set by a waiting thread

    @property
    def pid(self) -> int:
        return self._popen.pid

    async def wait(self) -> int:
        if self._returncode is None:
            await self._wait_exited_unreaped()
            if self._returncode is None:
                # The leader is a zombie now, so its pid (the group id) cannot
                # have been reused: kill the rest of the group, then reap.
                kill_process(self.pid)
                self._returncode = self._popen.wait()
                if self._pidfd is not None:
                    os.close(self._pidfd)
                    self._pidfd = None
        return self._returncode

    def kill(self) -> None:
        if self._returncode is None:
            kill_process(self.pid)

    def has_ended(self) -> bool:
        if self._returncode is not None:
            return True
        if self._pidfd is not None:
            return pidfd_ready(self._pidfd)
        try:  # our child: WNOWAIT leaves the zombie for wait() to reap
            return _waitid_nowait(self.pid, hang=False) is not None
        except ChildProcessError:
            return True

    async def _wait_exited_unreaped(self) -> None:
        if self._pidfd is not None:
            await trio.lowlevel.wait_readable(self._pidfd)
            return
        # No pidfd (macOS, old Linux): one thread blocks in waitid for the
        # child's whole life, however often this wait is cancelled and redone.
        if self._exited is None:
            self._exited = exited = trio.Event()
            token = trio.lowlevel.current_trio_token()

            def deliver(_: object) -> None:
                try:
                    token.run_sync_soon(exited.set)
                except trio.RunFinishedError:
                    pass

            trio.lowlevel.start_thread_soon(partial(_waitid_nowait, self.pid), deliver)
        await self._exited.wait()


def _open_pidfd(pid: int) -> int | None:
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        fd: int = pidfd_open(pid)
    except OSError:
        return None
    return fd


def pidfd_ready(pidfd: int) -> bool:
    """The process behind ``pidfd`` has ended (a poll that does not wait)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def _waitid_nowait(pid: int, *, hang: bool = True) -> os.waitid_result | None:
    """Wait for our child ``pid`` to end, or (``hang=False``) look whether it
    has: either way it is left a zombie, for ``Popen.wait`` to reap."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | (0 if hang else os.WNOHANG))
