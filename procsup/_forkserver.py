"""The fork-server start method: workers forked from a warm template process.

One template per spawner (so per pool), started on the first spawn the way
an exec worker is (``sys.executable -c``, the parent's ``sys.path``, its own
process group). It imports ``procsup._child`` and the ``preload`` modules
once, then forks one worker per request; the worker runs the same
:func:`procsup._child.main` an exec'd worker runs. The template side is
:mod:`procsup._forkserver_child`, which also describes the control protocol.

Contracts:

* A preload module that fails to import fails that spawn with
  :class:`WorkerStartError` naming the module, with the template's
  traceback; that template exits, and the next spawn tries a new one (so a
  module fixed meanwhile is picked up).
* A worker's end is seen through a pidfd; its return code comes from the
  template, which kills the rest of the worker's process group while the
  leader is an unreaped zombie, then reaps it and reports. If the template
  dies first, the status is unknown and :meth:`ChildProcess.wait` returns
  ``-SIGKILL`` (the spawner SIGKILLs every worker of a dead template).
* No orphans: the template exits on EOF of its control socket (parent dead
  or closing), SIGKILLing its workers' groups; each worker also kills its own
  group on EOF of its channel. A template that dies has its workers killed
  by the spawner, and the next spawn starts a new one, after a backoff when
  templates keep dying.
* The template keeps the working directory and ``sys.path`` the parent had
  when the template started (at the first spawn); exec workers take them at
  each spawn. The environment is every worker's own: :attr:`environ_base`
  is the template's, and each worker is sent what differs from it now (see
  :mod:`procsup._startup`). Descriptors that
  preloaded modules open are shared with every worker, as with any fork.
* A pool's learned job modules (:attr:`learned`, see :mod:`procsup._learn`)
  are sent to the template before the next fork; it imports each once, after
  a forked copy of it imported the module cleanly within a bound (no
  exception, no thread, descriptor or signal handler left behind), so that
  every worker forked later shares it. One it does not import is reported
  and logged once: a module that raised or took too long is dropped from the
  list; one that misbehaved only for a template is still imported by each
  worker while it warms.
* One background task per template reads its control socket. The Spawner
  protocol gives no nursery, so it is a trio *system* task; :meth:`aclose`
  ends it and waits for it, and it kills and reaps its template on the way
  out even when the run itself ends.
"""

from __future__ import annotations

import array
import logging
import os
import random
import signal
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Sequence

import trio

from . import _forkserver_child as proto
from ._backoff import backoff_delay
from ._errors import WorkerStartError, describe_exit
from ._learn import LearnedModules, import_bound
from ._process import (
    ChildProcess,
    _ExecChild,
    _open_pidfd,
    kill_process,
    parent_main_reference,
    pidfd_ready,
)
from ._startup import environ_snapshot

__all__ = ["ForkServerSpawner"]

logger = logging.getLogger("procsup")  # the scheme: see procsup._worker

_BOOTSTRAP = (
    "import sys;sys.path[:]={path!r};from procsup._forkserver_child import serve,run_worker;"
    "run_worker(serve({fd},{preload!r},{main!r}),{main!r})"
)
# Every wait on a template is bounded by the user's settings (the spawner's
# start_timeout is init_timeout, its stop_timeout shutdown_timeout), and by
# these caps where the template's part takes milliseconds:
# after a worker ended, how long the template may take to reap and report it;
_REPORT_DEADLINE = 5.0
# a closing template exits at once on EOF; past this it is SIGKILLed.
_EXIT_GRACE = 2.0
_BACKOFF_BASE = 0.1
_BACKOFF_CAP = 5.0


class ForkServerSpawner:
    """Forks workers from one template process that imported ``preload``.

    Args:
        preload: modules the template imports once, so that workers start
            with them already imported.
        executable: the Python interpreter of the template.
        start_timeout: seconds the template may take to start and import
            ``preload``, and to answer a fork request, before the spawn
            fails with :class:`WorkerStartError` (a pool's: ``init_timeout``).
        stop_timeout: seconds past which a closing template that has not
            exited, or one that has not reported a worker's end, is
            SIGKILLed (at most 2 and 5 s; a pool's: ``shutdown_timeout``).
        learned: a pool's job modules, for the template to import before
            its next fork.
    """

    def __init__(
        self,
        preload: Sequence[str] = (),
        *,
        executable: str | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        learned: LearnedModules | None = None,
    ) -> None:
        self.preload = tuple(preload)
        self.executable = executable or sys.executable
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._template: _Template | None = None
        self._templates: set[_Template] = set()  # not yet reaped, for aclose
        self._start_lock = trio.Lock()
        self._failures = 0  # templates in a row that failed to start or died
        self._closed = False
        self.environ_base: dict[bytes, bytes] | None = None
        """The environment the running template started with (None before
        the first): a worker is sent what differs from it."""
        self.learned = learned  # the pool's job modules, for the template; never replaced

    @property
    def template_pid(self) -> int | None:
        """The running template's process id, if one runs."""
        template = self._template
        return template.pid if template is not None and template.alive else None

    async def spawn(self, fd: int, control_fd: int, mark_fd: int = -1) -> ChildProcess:
        fds = (fd, control_fd) if mark_fd < 0 else (fd, control_fd, mark_fd)
        template = await self._running_template()
        learned = self.learned
        if learned is not None and template.learned_version != learned.version:
            await template.import_learned(learned)
        try:
            child = await template.fork(fds)
        except _TemplateGone:
            # It died (killed with its workers?) before it forked ours: the
            # request is ours to make again, once, to a new template.
            child = await (await self._running_template()).fork(fds)
        self._failures = 0
        return child

    async def aclose(self) -> None:
        """Stop the template (EOF, then SIGKILL after a grace) and reap it."""
        with trio.CancelScope(shield=True):
            self._closed = True
            self._template = None
            for template in list(self._templates):
                await template.aclose()

    async def _running_template(self) -> _Template:
        template = self._template
        if template is not None and template.alive and not self._closed:
            return template  # the common case: no lock, no scheduler round
        async with self._start_lock:
            if self._closed:
                raise WorkerStartError("the fork server is closed", pid=None, phase="init")
            template = self._template
            if template is not None and template.alive:
                return template
            if template is not None:
                self._failures += 1  # it died under us
            self._template = None
            await trio.sleep(
                backoff_delay(
                    self._failures, base=_BACKOFF_BASE, cap=_BACKOFF_CAP, jitter=random.random()
                )
            )
            try:
                template = await self._start()
            except (WorkerStartError, OSError):
                self._failures += 1
                raise
            self._template = template
            return template

    async def _start(self) -> _Template:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            fd = child_end.fileno()
            code = _BOOTSTRAP.format(
                path=sys.path, fd=fd, preload=list(self.preload), main=parent_main_reference()
            )

            self.environ_base = environ_snapshot()  # what Popen passes on

            def popen() -> subprocess.Popen[bytes]:
                return subprocess.Popen(
                    [self.executable, "-c", code],
                    pass_fds=(fd,),
                    stdin=subprocess.DEVNULL,
                    process_group=0,
                )

            # Not abandonable: a process started by the thread must reach its owner.
            process = await trio.to_thread.run_sync(popen)
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        template = _Template(self, _ExecChild(process), parent_end)
        self._templates.add(template)
        trio.lowlevel.spawn_system_task(
            template.serve, name=f"procsup fork server pid={template.pid}"
        )
        try:
            with trio.fail_after(self.start_timeout):
                await template.started.wait()
        except trio.TooSlowError:
            logger.error(
                "fork server pid=%d did not start within %gs (stuck importing its preload "
                "modules %s?); killing it",
                template.pid,
                self.start_timeout,
                list(self.preload),
            )
            template.kill()
            raise WorkerStartError(
                "the fork server did not start in time (importing preload modules?)",
                pid=None,
                phase="init",
                setting=f"start_timeout={self.start_timeout:g}s (init_timeout)",
            ) from None
        except BaseException:
            template.kill()
            raise
        if template.start_error is not None:
            raise template.start_error
        return template


class _Template:
    """One template process, seen from the parent, and its workers."""

    def __init__(
        self, spawner: ForkServerSpawner, process: _ExecChild, sock: socket.socket
    ) -> None:
        sock.setblocking(False)
        self._spawner = spawner
        self._process = process
        self._sock = sock
        self._send_lock = trio.StrictFIFOLock()
        self._replies: deque[_Reply] = deque()  # forks asked for, in request order
        self._children: dict[int, _ForkChild] = {}  # forked, end not yet reported
        self.alive = True
        self.started = trio.Event()  # READY, PRELOAD_FAILED or the end came
        self.start_error: WorkerStartError | None = None
        self._ended = trio.Event()  # the template is reaped
        self.learned_version = 0  # of the spawner's learned modules, when last sent
        self._imported: set[str] = set()  # learned modules sent to it

    @property
    def pid(self) -> int:
        return self._process.pid

    def stop_timeout(self) -> float:
        return self._spawner.stop_timeout

    def kill(self) -> None:
        """SIGKILL the template; :meth:`serve` then cleans up after it."""
        self.alive = False  # the next spawn starts a new one
        self._process.kill()

    async def aclose(self) -> None:
        self._close_socket()  # EOF to the template; wakes serve()
        await self._ended.wait()

    def _close_socket(self) -> None:
        if self._sock.fileno() != -1:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()

    async def import_learned(self, learned: LearnedModules) -> None:
        """Send the learned modules it has not been sent; it imports them before
        it answers the next fork request (whose deadline bounds them too)."""
        version = learned.version
        names = [name for name in learned.for_template() if name not in self._imported]
        if names:
            bound = import_bound(self._spawner.start_timeout)
            text = "\n".join(names).encode("utf-8", "replace")
            await self._request(proto.IMPORT, value=int(bound * 1000), text=text)
            self._imported.update(names)
        self.learned_version = version

    async def fork(self, fds: tuple[int, ...]) -> _ForkChild:
        """Ask for one worker on these socket ends. Shielded, with a deadline: once
        asked for, a worker must reach its owner or be killed."""
        reply = _Reply()
        # One scope, shielded and with a deadline, for the request, the
        # answer and the acknowledgement.
        deadline = trio.current_time() + self._spawner.start_timeout
        with trio.CancelScope(shield=True, deadline=deadline):
            await self._request(proto.FORK, fds=fds, reply=reply)
            await reply.done.wait()
            if reply.error is None:
                child = _ForkChild(self, reply.pid, _open_pidfd(reply.pid))
                self._children[child.pid] = child
                if not self.alive:  # it died before it could be told to reap this one
                    self._forget(child)
                else:
                    await self._request(proto.ACK, child.pid)
                return child
        if reply.error is not None:
            raise reply.error
        logger.error(
            "fork server pid=%d did not answer a fork request within %gs (stopped?); killing it",
            self.pid,
            self._spawner.start_timeout,
        )
        self.kill()  # and its end settles the child, if it got as far as one
        raise WorkerStartError(
            "the fork server did not answer",
            pid=None,
            phase="init",
            setting=f"init_timeout={self._spawner.start_timeout:g}s",
        )

    async def _request(
        self,
        kind: int,
        pid: int = 0,
        *,
        value: int = 0,
        text: bytes = b"",
        fds: tuple[int, ...] = (),
        reply: _Reply | None = None,
    ) -> None:
        """Send one message (atomic: SOCK_SEQPACKET). Replies come in request
        order, so a request that must wait for room queues behind the lock."""
        msg = [proto.MSG.pack(kind, pid, value) + text]
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        if reply is not None:  # queued first: the answer may come before sendmsg returns
            self._replies.append(reply)
        try:
            if not self._send_lock.locked():
                try:  # the common case: room in the buffer, no scheduler round
                    self._sock.sendmsg(msg, ancillary)
                    return
                except BlockingIOError:
                    pass
            async with self._send_lock:
                while True:
                    await trio.lowlevel.wait_writable(self._sock)
                    try:
                        self._sock.sendmsg(msg, ancillary)
                        return
                    except BlockingIOError:
                        pass
        except (OSError, trio.ClosedResourceError) as exc:
            # Most likely the template is gone, and serve() settles the rest.
            if reply is not None and not reply.done.is_set():
                if reply in self._replies:
                    self._replies.remove(reply)
                reply.fail(f"could not reach the fork server: {exc!r}")

    def _forget(self, child: _ForkChild) -> None:
        """The template cannot report ``child`` any more: kill its group, settle it."""
        self._children.pop(child.pid, None)
        kill_process(child.pid)
        child._settle(None)

    # -- the reader: a system task per template --------------------------------

    async def serve(self) -> None:
        try:
            while self._serve_ready():
                await trio.lowlevel.wait_readable(self._sock)
        except (OSError, trio.ClosedResourceError):
            pass  # closed by aclose(), or the template is gone
        except Exception:
            logger.exception("fork server pid=%d: unexpected error; killing it", self.pid)
        finally:
            with trio.CancelScope(shield=True):
                await self._end()

    def _serve_ready(self) -> bool:
        """Handle every message waiting (one per recv); False once the channel ends."""
        while True:
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                return True
            if not data:
                return False
            if not self._dispatch(data):
                logger.error("fork server pid=%d broke the protocol; killing it", self.pid)
                return False

    def _dispatch(self, data: bytes) -> bool:
        if len(data) < proto.MSG.size:
            return False
        kind, pid, value = proto.MSG.unpack_from(data)
        if kind == proto.EXITED and pid in self._children:
            self._children.pop(pid)._settle(value)
        elif kind in (proto.FORKED, proto.FORK_FAILED) and self._replies:
            reply = self._replies.popleft()
            if kind == proto.FORKED:
                reply.pid = pid
                reply.done.set()
            else:
                reply.fail(f"the fork server could not fork: {os.strerror(value)}")
        elif kind == proto.READY and not self.started.is_set() and pid == self.pid:
            self.started.set()
        elif kind == proto.DROPPED:
            name, _, why = data[proto.MSG.size :].decode("utf-8", "replace").partition("\0")
            if self._spawner.learned is not None:
                self._spawner.learned.refuse(name, why, everywhere=bool(value), pid=self.pid)
        elif kind == proto.PRELOAD_FAILED and not self.started.is_set():
            self.start_error = _preload_error(data[proto.MSG.size :])
            self.started.set()
        else:
            return False
        return True

    async def _end(self) -> None:
        """The control channel ended: nothing of this template may outlive it."""
        self.alive = False
        self._close_socket()
        if not self.started.is_set():
            rc = await self._reap()
            self.start_error = WorkerStartError(
                f"the fork server exited during startup ({describe_exit(rc)})",
                pid=None,
                phase="init",
            )
            self.started.set()
        while self._replies:
            self._replies.popleft().fail("the fork server exited before it answered", gone=True)
        for child in list(self._children.values()):
            self._forget(child)
        await self._reap()
        self._spawner._templates.discard(self)
        self._ended.set()

    async def _reap(self) -> int:
        """Wait for the template to exit, SIGKILL it after a grace, reap it."""
        grace = min(_EXIT_GRACE, self._spawner.stop_timeout)
        with trio.move_on_after(grace) as scope:
            await self._process.wait()
        if scope.cancelled_caught:
            logger.error(
                "fork server pid=%d did not exit within %gs of its channel closing "
                "(stopped?); killing it",
                self.pid,
                grace,
            )
        self.kill()  # a no-op once reaped
        return await self._process.wait()


class _TemplateGone(WorkerStartError):
    """The template exited before it answered a fork request."""


class _Reply:
    __slots__ = ("done", "error", "pid")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.pid = 0
        self.error: BaseException | None = None

    def fail(self, what: str, *, gone: bool = False) -> None:
        cls = _TemplateGone if gone else WorkerStartError
        self.error = cls(what, pid=None, phase="init")
        self.done.set()


class _ForkChild:
    """A worker forked by the template: not our child, so watched by pidfd."""

    def __init__(self, template: _Template, pid: int, pidfd: int | None) -> None:
        self._template = template
        self._pid = pid
        self._pidfd = pidfd
        self._status: int | None = None
        self._settled = trio.Event()  # the template reported the end, or is gone
        self._returncode: int | None = None

    @property
    def pid(self) -> int:
        return self._pid

    async def wait(self) -> int:
        if self._returncode is None:
            if self._pidfd is None:  # no pidfd: the template's report is the only news
                await self._settled.wait()
            else:
                await trio.lowlevel.wait_readable(self._pidfd)
                if not self._settled.is_set():  # (often it came first: no scope then)
                    with trio.move_on_after(min(_REPORT_DEADLINE, self._template.stop_timeout())):
                        await self._settled.wait()
                if not self._settled.is_set():
                    logger.error(
                        "fork server pid=%d did not report the end of worker pid=%d; killing it",
                        self._template.pid,
                        self.pid,
                    )
                    self._template.kill()
                    self._template._forget(self)  # its leader is still a zombie
                os.close(self._pidfd)
                self._pidfd = None
            self._returncode = -signal.SIGKILL if self._status is None else self._status
        return self._returncode

    def kill(self) -> None:
        # Once reported, the template has killed the group and reaped the
        # leader: the pid may belong to someone else now.
        if not self._settled.is_set():
            kill_process(self.pid)

    def has_ended(self) -> bool:
        if self._returncode is not None or self._settled.is_set():
            return True
        return self._pidfd is not None and pidfd_ready(self._pidfd)

    def _settle(self, status: int | None) -> None:
        if not self._settled.is_set():
            self._status = status
            self._settled.set()


def _preload_error(text: bytes) -> WorkerStartError:
    module, _, rest = text.decode("utf-8", "replace").partition("\0")
    error, _, tb = rest.partition("\0")
    err = WorkerStartError(
        f"the fork server could not import preload module {module!r}: {error}; "
        "fix the module or remove it from preload",
        pid=None,
        phase="init",
    )
    err.remote_type = error.partition(":")[0]
    err.remote_traceback = tb
    return err
