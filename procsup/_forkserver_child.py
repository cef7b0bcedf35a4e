"""The fork server's template process: imports once, forks workers on request.

Standard library only, single-threaded, and trio-free, so every worker forked
from it starts as small and as clean as an exec'd one, minus the imports.

The control channel is an ``AF_UNIX`` ``SOCK_SEQPACKET`` socketpair, so the
kernel keeps message boundaries and no framing is needed: each message is one
``MSG`` (kind, pid, value), and ``FORK`` carries the worker's channel end as
``SCM_RIGHTS``. The conversation:

* template -> parent: ``READY`` once the preload modules are imported, or
  ``PRELOAD_FAILED`` followed by UTF-8 text (module, NUL, error, NUL,
  traceback), after which the template exits;
* parent -> template: ``FORK`` with two fds (the worker's jobs and control
  socket ends); template -> parent: ``FORKED``
  (pid) or ``FORK_FAILED`` (errno), in request order;
* parent -> template: ``ACK`` (pid) once the parent holds a pidfd on it. Only
  then may the template reap that worker: until it does, the pid cannot be
  reused, so the parent's ``pidfd_open`` names the right process;
* parent -> template: ``IMPORT`` (value: a bound in ms) followed by module
  names, one a line: the pool's learned job modules (:mod:`procsup._learn`),
  for the template to import before the next fork (see :func:`_import_learned`);
  template -> parent: ``DROPPED`` (value 1: drop it everywhere, 0: only here)
  followed by the module's name, NUL, and why, for each it did not import;
* template -> parent: ``EXITED`` (pid, subprocess-style return code), sent
  after the template has SIGKILLed what was left of the worker's process
  group (while the leader was still an unreaped zombie) and reaped it.

EOF on the control channel means the parent is gone or closing: the template
SIGKILLs every worker's process group it still has and exits at once.
"""

from __future__ import annotations

# The C modules, not signal, socket and typing: those pull in enum,
# selectors and more, and the template's start is on the path of a pool's
# first warm workers.
import _signal  # type: ignore[import-not-found,unused-ignore]
import _socket
import os
import select
import struct
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

__all__ = ["MSG", "run_worker", "serve"]

MSG = struct.Struct("!Bqq")
_FD = struct.Struct("i")
# parent -> template
FORK = 1
ACK = 2
IMPORT = 3
# template -> parent
READY = 10
PRELOAD_FAILED = 11
FORKED = 12
FORK_FAILED = 13
EXITED = 14
DROPPED = 15

_MAX_TEXT = 60_000  # a preload traceback, cut to fit one message
_MAX_MSG = 65_536  # the parent reads at most this per message

# The template's workers: pid -> the parent has acknowledged it (may be reaped).
_children: dict[int, bool] = {}
_parent_main = ""  # where the parent's __main__ comes from (procsup._process)


def serve(ctrl_fd: int, preload: list[str], parent_main: str = "") -> tuple[int, ...]:
    """Run the template on the control socket ``ctrl_fd``.

    Never returns in the template, which ends with ``os._exit``; returns in
    each forked worker, with the worker's two socket ends, its signal handling
    reset and the template's descriptors closed. (No ``finally`` or ``with``
    here: a forked worker unwinds these frames.) ``parent_main`` is where the
    parent's ``__main__`` comes from, for a learned ``__mp_main__``.
    """
    global _parent_main
    _parent_main = parent_main
    ctrl = _socket.socket(fileno=ctrl_fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    _signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)  # one byte is news enough
    _signal.signal(_signal.SIGCHLD, _ignore)  # a Python handler, so wake_w is written
    _preload(ctrl, preload)
    _send(ctrl, READY, os.getpid())
    poller = select.poll()
    poller.register(ctrl, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd == wake_r:
                os.read(wake_r, 4096)
                continue
            fds: list[int] = []
            try:
                msg, fds = _recv_with_fds(ctrl, _MAX_MSG, 3)
            except OSError:
                msg = b""
            if len(msg) < MSG.size:  # EOF, or a parent we do not understand
                _shutdown()
            kind, pid, value = MSG.unpack_from(msg)
            if kind == FORK and len(fds) in (2, 3):  # jobs, control [, start mark]
                if _fork(ctrl, fds) == 0:
                    return _become_worker(ctrl, wake_r, wake_w, fds)
            elif kind == ACK and pid in _children:
                _children[pid] = True
            elif kind == IMPORT:
                _import_learned(ctrl, msg[MSG.size :].decode("utf-8", "replace"), value / 1000)
            else:
                _shutdown()
        _reap(ctrl)


def run_worker(fds: tuple[int, ...], parent_main: str = "") -> NoReturn:
    """A forked worker's life: :func:`procsup._child.main`, then a quick exit.

    As multiprocessing does for forked children: join non-daemon threads, run
    ``atexit`` handlers, flush stdio, then ``os._exit`` -- skipping the
    interpreter's module teardown, which costs a one-shot worker milliseconds.
    """
    import atexit

    from procsup._child import run

    try:
        code = run(fds[0], fds[1], parent_main, fds[2] if len(fds) > 2 else -1)
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except BaseException:  # noqa: BLE001 -- reported as the interpreter would
        sys.excepthook(*sys.exc_info())
        code = 1
    try:
        threading = sys.modules.get("threading")  # no module, no threads of its making
        if threading is not None:
            threading._shutdown()
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    finally:
        os._exit(code)


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _ignore(signum: int, frame: object) -> None:
    pass


def _recv_with_fds(sock: _socket.socket, size: int, max_fds: int) -> tuple[bytes, list[int]]:
    """One message and the descriptors sent with it (socket.recv_fds, without
    importing socket)."""
    fds: list[int] = []
    msg, ancillary, _, _ = sock.recvmsg(size, _socket.CMSG_LEN(max_fds * _FD.size))
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds.extend(fd for (fd,) in _FD.iter_unpack(data[: len(data) - len(data) % _FD.size]))
    return msg, fds


def _send(ctrl: _socket.socket, kind: int, pid: int = 0, value: int = 0, text: bytes = b"") -> None:
    try:
        ctrl.send(MSG.pack(kind, pid, value) + text)
    except OSError:
        _shutdown()  # the parent is gone


def _preload(ctrl: _socket.socket, names: list[str]) -> None:
    import importlib

    # What every worker needs, imported once: a worker pays for each module it
    # imports itself twice over, in time and in page faults (see
    # benchmarks/where_time_goes.py).
    for name in ("atexit", "mmap", "pickle", "procsup._child"):
        importlib.import_module(name)
    try:  # once here, not in every worker (which names itself for ps)
        sys.modules["procsup._child"].find_arg_area()
    except (OSError, ValueError, IndexError):
        pass
    for name in names:
        try:
            importlib.import_module(name)
        except BaseException as exc:  # noqa: BLE001 -- any failure is the parent's to report
            import traceback

            text = f"{name}\0{type(exc).__name__}: {exc}\0{traceback.format_exc()}"
            _send(ctrl, PRELOAD_FAILED, text=text.encode("utf-8", "replace")[:_MAX_TEXT])
            os._exit(1)


def _import_learned(ctrl: _socket.socket, text: str, bound: float) -> None:
    """Import the pool's learned job modules here, once, so that every worker
    forked after this shares them. A copy of the template (:func:`_try_imports`)
    imports them first: only those it imported cleanly are imported here, so
    a module that raises, hangs, exits, or leaves threads, descriptors or
    signal handlers behind never touches the template. The others are reported
    (``DROPPED``), each once."""
    names = [name for name in text.split("\n") if name and name not in sys.modules]
    while names:
        verdicts, tried = _try_imports(ctrl, names, bound)
        if not tried:
            return
        for name in tried:
            why = verdicts.get(name)
            if why is None:
                try:
                    _import(name)
                    continue
                except BaseException as exc:  # noqa: BLE001 -- reported, as in the copy
                    why = "!" + _raised(exc)
            everywhere = why.startswith("!")  # it fails anywhere, or takes too long
            report = f"{name}\0{why.lstrip('!')}".encode("utf-8", "replace")[:_MAX_TEXT]
            _send(ctrl, DROPPED, value=int(everywhere), text=report)
        names = names[len(tried) :]


def _try_imports(
    ctrl: _socket.socket, names: list[str], bound: float
) -> tuple[dict[str, str], list[str]]:
    """Import ``names`` in a forked copy of the template, each within ``bound``
    seconds: why each misbehaved (``!`` first: drop it everywhere), and the
    names tried, a prefix of ``names`` (the copy stops at one that hangs or
    ends it; none if it cannot fork)."""
    _flush()
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        return {}, []  # not tried, not imported: its workers import them
    if pid == 0:
        os.close(read_end)
        ctrl.close()  # the parent's EOF must not wait for this copy
        _trial(write_end, names)
    os.close(write_end)
    verdicts: dict[str, str] = {}
    tried: list[str] = []
    poller = select.poll()
    poller.register(read_end, select.POLLIN)
    pending = b""
    while len(tried) < len(names):
        name = names[len(tried)]
        chunk = os.read(read_end, _MAX_MSG) if poller.poll(int(bound * 1000)) else None
        if not chunk:
            why = "ended the process importing it" if chunk == b"" else f"took over {bound:g}s"
            verdicts[name] = "!" + why
            tried.append(name)
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            done, _, why = line.decode("utf-8", "replace").partition("\0")
            tried.append(done)
            if why:
                verdicts[done] = why
    os.close(read_end)
    _kill(pid)  # not its group: that is the template's
    os.waitpid(pid, 0)
    return verdicts, tried


def _trial(write_end: int, names: list[str]) -> NoReturn:
    """In the template's copy: import each name, write ``name NUL why`` a line."""
    _undo_template_signals()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # its output would come twice: here and in the template
        os.dup2(devnull, fd)
    os.close(devnull)
    for name in names:
        before = _footprint()
        try:
            _import(name)
            why = _changes(before, _footprint())
        except BaseException as exc:  # noqa: BLE001 -- reported
            why = "!" + _raised(exc)
        line = f"{name}\0{why}".replace("\n", " ")[: _MAX_TEXT - 1] + "\n"
        os.write(write_end, line.encode("utf-8", "replace"))
    os._exit(0)


def _footprint() -> tuple[int, set[str], list[object]]:
    """What an import must not change in the template: its threads, its open
    descriptors, its signal handlers and wakeup descriptor."""
    wakeup = _signal.set_wakeup_fd(-1)
    handlers = [_signal.getsignal(signum) for signum in range(1, _signal.NSIG)]
    handlers.append(wakeup)
    return len(os.listdir("/proc/self/task")), set(os.listdir("/proc/self/fd")), handlers


def _changes(
    before: tuple[int, set[str], list[object]], after: tuple[int, set[str], list[object]]
) -> str:
    """Why an import that left ``after`` behind is no module for the template
    (a fork copies only the forking thread, and shares every descriptor); "" if none."""
    if after[0] > before[0]:
        return f"it starts {after[0] - before[0]} thread(s)"
    if after[1] - before[1]:
        return f"it leaves {len(after[1] - before[1])} descriptor(s) open"
    if after[2] != before[2]:
        return "it sets signal handlers"
    return ""


def _import(name: str) -> None:
    """Import ``name`` as a worker would: procsup.in_worker() is true meanwhile."""
    child: Any = sys.modules["procsup._child"]
    child.importing_for_workers = True
    try:
        if name != "__mp_main__":
            __import__(name)
        elif _parent_main:  # the parent's main script, as a worker imports it
            child._import_parent_main(_parent_main)
        else:
            raise ImportError("the parent's __main__ has no file to import")
    finally:
        child.importing_for_workers = False


def _raised(exc: BaseException) -> str:
    return f"importing it raised {type(exc).__name__}: {exc}"


def _kill(pid: int) -> None:
    try:
        os.kill(pid, _signal.SIGKILL)
    except OSError:
        pass


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()  # or a forked copy inherits, and repeats, buffered output


def _fork(ctrl: _socket.socket, fds: list[int]) -> int:
    """Fork one worker on ``fds``; returns 0 in the worker, its pid (or -1) here."""
    _flush()
    try:
        pid = os.fork()
    except OSError as exc:
        _close_all(fds)
        _send(ctrl, FORK_FAILED, value=exc.errno or 0)
        return -1
    if pid == 0:
        return 0
    _close_all(fds)  # the worker's channel must end when the worker does
    try:
        os.setpgid(pid, pid)  # as the worker does too: the group exists before we answer
    except OSError:
        pass
    _children[pid] = False
    _send(ctrl, FORKED, pid)
    return pid


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _undo_template_signals() -> None:
    """In a forked copy: no wakeup descriptor, SIGCHLD as the default."""
    _signal.set_wakeup_fd(-1)
    # The C function: signal.signal's enum conversion of the old handler
    # would cost a forked worker some 70 page faults.
    _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)


def _become_worker(
    ctrl: _socket.socket, wake_r: int, wake_w: int, fds: list[int]
) -> tuple[int, ...]:
    os.setpgid(0, 0)
    _undo_template_signals()
    ctrl.close()
    os.close(wake_r)
    os.close(wake_w)
    return tuple(fds)


def _reap(ctrl: _socket.socket) -> None:
    """Report every acknowledged worker that has ended."""
    for pid in [pid for pid, acked in _children.items() if acked]:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                continue
        except ChildProcessError:
            continue
        # The leader is a zombie, so its pid (the group id) is not reused yet.
        _kill_group(pid)
        _, status = os.waitpid(pid, 0)
        del _children[pid]
        _send(ctrl, EXITED, pid, os.waitstatus_to_exitcode(status))


def _kill_group(pgid: int) -> None:
    """The worker (a job may have moved it to another group) and its group."""
    for kill in (os.kill, os.killpg):
        try:
            kill(pgid, _signal.SIGKILL)
        except OSError:
            pass


def _shutdown() -> NoReturn:
    """The parent is gone or closing: no worker of ours may outlive us."""
    for pid in _children:
        _kill_group(pid)
    os._exit(0)
