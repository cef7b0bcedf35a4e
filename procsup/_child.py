"""The worker process's side of procsup.

Standard library only, and as little of it as possible: ``pickle``,
``traceback`` and ``logging`` are imported when first needed, and ``trio``
only when a job or initializer is async (or, with ``worker_loop``, the loop's
library, by :mod:`procsup._child_loop`). Three threads:

* the main thread reads its orders (INIT, JOB, STOP) from the jobs socket
  itself, and runs the initializer and the jobs, one at a time;
* a control thread reads the control socket: it answers pings at once (even
  while a sync job holds the main thread between bytecodes), forwards
  cancellation, and on EOF -- the parent is gone -- kills this process's
  whole group;
* a log writer thread ships log records, so logging never blocks a job.

Everything the worker says goes out on the jobs socket, under a lock.
"""

from __future__ import annotations

# Private C modules instead of signal, threading, collections and queue: the
# public ones pull in enum, functools and heapq, milliseconds of every start.
import _signal as signal  # type: ignore[import-not-found,unused-ignore]
import _thread
import os
import sys

from . import _child_core, _child_jobs
from ._child_core import (
    _FIELD_LENGTH,
    _MAX_NAME,
    _NO_STATE,
    _begin_job,
    _call,
    _cut,
    _describe,
    _initializer,
    _Interrupted,
    _next_order,
    _orphaned,
    _request_cancel,
    _share,
    _utf8,
)
from ._child_io import _Channel, _FrameReader
from ._child_jobs import _map_start_mark, _run_batch, _run_job, job_order
from ._wire import (
    HEADER,
    TO_CONTROL,
    TO_MAIN,
    Kind,
    encode,
)

TYPE_CHECKING = False  # not typing's: importing typing would cost every worker's start
if TYPE_CHECKING:
    from typing import Any, NoReturn

__all__ = [
    "importing_parent_main",
    "in_worker",
    "main",
    "run",
    "worker_slot",
    "worker_state",
]

_slot: int | None = None  # set from INIT


def worker_state() -> Any:
    """Return what the initializer returned, inside a worker process.

    Raises:
        RuntimeError: when called outside a worker, or before its
            initializer has returned.
    """
    state = _child_core._state
    if state is _NO_STATE:
        raise RuntimeError(
            "procsup.worker_state() is only available inside a worker process, "
            "after its initializer has returned"
        )
    return state


def worker_slot() -> int:
    """Return this worker's slot, inside a worker process: the lowest integer
    in ``[0, max_workers)`` that no other live worker of its pool holds (so a
    replacement takes the slot of the worker it replaces). A worker of
    :func:`procsup.open_worker` has slot 0.

    Raises:
        RuntimeError: when called outside a worker.
    """
    if _slot is None:
        raise RuntimeError("procsup.worker_slot() is only available inside a worker process")
    return _slot


def in_worker() -> bool:
    """True inside a procsup worker process, and in a fork server's template
    while it imports a pool's job modules for the workers it forks."""
    return _channel is not None or importing_for_workers


_channel: _Channel | None = None
importing_for_workers = False  # set by a fork server's template (procsup._forkserver_child)


def main(fd: int, control_fd: int, parent_main: str = "", mark_fd: int = -1) -> NoReturn:
    """Entry point of an exec'd worker process: :func:`run`, then exit."""
    sys.exit(run(fd, control_fd, parent_main, mark_fd))


def run(fd: int, control_fd: int, parent_main: str = "", mark_fd: int = -1) -> int:
    """A worker's life on its inherited socket ends ``fd`` (jobs) and
    ``control_fd`` (pings and cancellation); returns its exit code.

    ``parent_main`` says where the parent's ``__main__`` comes from (see
    :func:`procsup._process.parent_main_reference`). ``mark_fd`` is the
    start mark's memory (see :mod:`procsup._startmark`; -1: none).
    """
    global _channel
    for inherited in (fd, control_fd):
        os.set_inheritable(inherited, False)  # a job's own subprocesses must not hold them
    if mark_fd >= 0:
        _map_start_mark(mark_fd)
    if parent_main:
        sys.modules["__main__"] = _ParentMain(parent_main)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    _channel = channel = _Channel(fd)
    _child_core.set_main_thread()
    _thread.start_new_thread(_control_forever, (channel, control_fd))
    _watch_logging_import()
    orders = _FrameReader(fd, TO_MAIN, channel)
    _child_jobs.set_orders(orders)
    try:
        code = _serve(channel, orders)
    except _Interrupted:
        code = 0 if _child_core._cancel_requested else 128 + signal.SIGTERM
    finally:  # records logged just before exit (even sys.exit in a job) still go out
        capture = sys.modules.get("procsup._capture")
        if capture is not None:  # and what it printed
            capture.stop_capture()
        try:
            channel.flush()
        except OSError:
            pass
    return code


class _ParentMain(type(sys)):  # type: ignore[misc]
    """Stands in for ``__main__``: the first name looked up that is not here
    (a pickled ``__main__.job``) imports the parent's main module, as
    ``__mp_main__`` so that its ``if __name__ == "__main__":`` block does not
    run, and every lookup is then answered from it. Nothing is imported for
    jobs and initializers that live in modules of their own."""

    def __init__(self, reference: str) -> None:
        super().__init__("__main__")
        self._procsup_reference = reference

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(_import_parent_main(self._procsup_reference), name)


_importing_parent_main = False


def importing_parent_main() -> bool:
    """True while a worker imports the parent's main module (which must not
    start workers of its own: that is what its ``__main__`` guard is for)."""
    return _importing_parent_main


def _import_parent_main(reference: str) -> Any:
    """Run the parent's main script or ``-m`` module as ``__mp_main__``, so
    that its classes are the parent's ``__main__`` ones (aliased there)."""
    global _importing_parent_main
    module = sys.modules.get("__mp_main__")
    if module is not None:
        return module
    import importlib.util
    from importlib.machinery import SourceFileLoader

    how, _, where = reference.partition(":")
    _importing_parent_main = True
    try:
        module = type(sys)("__mp_main__")
        path = where
        if how == "module":
            spec = importlib.util.find_spec(where)
            if spec is None or not spec.origin:
                raise ImportError(f"cannot find the parent's main module {where!r}")
            path = spec.origin
            module.__package__ = where.rpartition(".")[0]
        module.__file__ = path
        sys.modules["__mp_main__"] = module
        try:
            SourceFileLoader("__mp_main__", path).exec_module(module)
        except BaseException:
            del sys.modules["__mp_main__"]
            raise
        return module
    finally:
        _importing_parent_main = False


class _TooSlow(BaseException):
    """A learned module's import took longer than its bound."""


_timing_import = False  # a learned import runs under its timer: SIGALRM ends it


def _too_slow(signum: int, frame: object) -> None:
    if _timing_import:
        raise _TooSlow


def _import_learned(field: str) -> str:
    """Import the pool's job modules (procsup._learn: a bound in ms, then
    names, one a line), each within the bound; return those that failed."""
    global _timing_import
    bound, *names = field.split("\n") if field else ("0",)
    failed = []
    previous = signal.signal(signal.SIGALRM, _too_slow) if names else None
    for name in names:
        if name in sys.modules:  # imported by a fork server's template: nothing to time
            continue
        signal.setitimer(signal.ITIMER_REAL, int(bound) / 1000)
        try:
            _timing_import = True
            if name != "__mp_main__":
                __import__(name)
            elif isinstance(main := sys.modules.get("__main__"), _ParentMain):
                _import_parent_main(main._procsup_reference)  # the parent's main script
            else:
                failed.append(name)  # not a worker a pool started
            _timing_import = False
        except _Interrupted:
            raise
        except BaseException:  # noqa: BLE001 -- the parent drops it; its jobs report it
            failed.append(name)
        finally:
            _timing_import = False
            signal.setitimer(signal.ITIMER_REAL, 0)
    if previous is not None:
        signal.signal(signal.SIGALRM, previous)
    return "\n".join(failed)


def _serve(channel: _Channel, orders: _FrameReader) -> int:
    kind, fields = _next_order(orders)
    if kind != Kind.INIT:
        return 0
    payload, max_jobs, log_level, max_frame, shm_min_bytes, worker_loop, learned, *startup = fields
    _child_jobs.set_shm_min_bytes(shm_min_bytes)
    channel.max_frame = max_frame
    _start_up(channel, *startup)
    _set_log_level(log_level)
    if worker_loop:
        from ._child_loop import serve

        return serve(worker_loop, channel, orders, payload, max_jobs)
    try:
        initializer = _initializer(payload)
        state = _call(initializer) if initializer is not None else None
    except _Interrupted:
        raise
    except BaseException as exc:  # noqa: BLE001 -- SystemExit in an initializer is a failure too
        channel.send(encode(Kind.INIT_FAILED, *_describe(exc, room=max_frame)))
        return 1
    _child_core.set_state(state)
    failed = _import_learned(learned)
    if failed:
        channel.send(encode(Kind.IMPORT_FAILED, failed))
    channel.send(encode(Kind.READY, os.getpid()))
    done = 0
    while not max_jobs or done < max_jobs:
        kind, fields = _next_order(orders)
        if kind == Kind.BATCH:
            done += _run_batch(channel, *fields)
            continue
        job = job_order(kind, fields)
        if job is None:
            return 0  # STOP
        _begin_job()
        _run_job(channel, *job)
        done += 1
    return 0


def _control_forever(channel: _Channel, control_fd: int) -> None:
    reader = _FrameReader(control_fd, TO_CONTROL, channel)
    try:
        while (frame := reader.next()) is not None:
            kind, fields = frame
            if kind == Kind.PING:
                channel.send_urgent(encode(Kind.PONG, *fields))
            elif kind == Kind.TRIM:
                _child_jobs.trim(channel, *fields)
            else:  # CANCEL
                _request_cancel(*fields)
    except BaseException:  # noqa: BLE001 -- any failure here means the parent is gone
        pass
    _orphaned()


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Interrupted


# -- start-up --------------------------------------------------------------------
# What INIT says about the process itself (procsup._startup builds it): its
# slot, its name in ps and top, its environment, whether its output is
# captured. Applied before the initializer runs.


def _start_up(
    channel: _Channel, slot: int, title: str, comm: str, env: bytes, levels: str, capture: int
) -> None:
    global _slot, _logger_levels
    _slot = slot
    if title:
        _name_process(title, comm)
    if env:
        _update_environ(env)
    _logger_levels = levels
    if capture:
        from ._capture import capture_output

        capture_output(channel.post_log)


def _name_process(title: str, comm: str) -> None:
    """Show the interpreter's path and ``title`` in ps, and ``comm`` in top.

    The argument area is rewritten in place through /proc/self/mem, as
    setproctitle does: the new text and a NUL, and a last byte that is not
    NUL, which tells the kernel to show the area up to that first NUL. The
    kernel keeps 15 bytes of ``comm``. Three system calls each; skipped where
    /proc refuses.
    """
    try:
        start, end, argv0 = _arg_area or find_arg_area()
        text = (argv0 + b" " + title.encode("utf-8", "replace"))[: end - start - 2] + b"\0"
        fd = os.open("/proc/self/mem", os.O_WRONLY)
        try:
            os.pwrite(fd, text + bytes(end - start - len(text) - 1) + b" ", start)
        finally:
            os.close(fd)
        fd = os.open("/proc/self/comm", os.O_WRONLY)
        try:
            os.write(fd, comm.encode("utf-8", "replace")[:15])
        finally:
            os.close(fd)
    except (OSError, ValueError, IndexError):
        pass


_arg_area: tuple[int, int, bytes] | None = None  # (start, end, argv[0]) of the argument area


def find_arg_area() -> tuple[int, int, bytes]:
    """Where this process's arguments lie in its memory. A fork-server
    template calls this once: its workers inherit the answer (and the layout
    it describes), and skip reading and parsing /proc/self/stat."""
    global _arg_area
    fd = os.open("/proc/self/stat", os.O_RDONLY)
    try:
        stat = os.read(fd, 4096)
    finally:
        os.close(fd)
    fields = stat[stat.rindex(b")") + 2 :].split()  # from field 3 on
    argv0 = sys.orig_argv[0].encode(sys.getfilesystemencoding(), "surrogateescape")
    _arg_area = int(fields[45]), int(fields[46]), argv0  # fields 48 and 49
    return _arg_area


def _update_environ(env: bytes) -> None:
    """``KEY=VALUE`` sets, a bare ``KEY`` removes; NUL-separated."""
    for item in env.split(b"\0"):
        key, eq, value = item.partition(b"=")
        if eq:
            os.environb[key] = value
        else:
            os.environb.pop(key, None)


# -- logging -------------------------------------------------------------------
# Records are shipped as fixed fields (never pickled), so an unpicklable record
# degrades to its formatted message. ``logging`` costs the child milliseconds
# to import, so the handler is installed when user code first imports it.

_log_level = 0
_logger_levels = ""  # the parent's named loggers' levels, "name=level" NUL-separated


def _set_log_level(level: int) -> None:
    global _log_level
    _log_level = level
    if "logging" in sys.modules:
        _install_log_handler()


def _watch_logging_import() -> None:
    if "logging" in sys.modules:
        _install_log_handler()
    else:
        sys.meta_path.insert(0, _LoggingImportHook())


class _LoggingImportHook:
    """A meta path finder that only notices ``import logging``."""

    def find_spec(self, name: str, path: object, target: object = None) -> Any:
        if name != "logging":
            return None
        sys.meta_path.remove(self)
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(name)
        loader = getattr(spec, "loader", None)
        if loader is not None and hasattr(loader, "exec_module"):
            run_module = loader.exec_module

            def exec_module(module: Any) -> None:
                run_module(module)
                _install_log_handler(module)

            loader.exec_module = exec_module
        return spec


def _install_log_handler(logging: Any = None) -> None:
    if logging is None:
        import logging
    root = logging.getLogger()
    if not any(isinstance(h, _ShipHandler) for h in root.handlers):
        handler = _make_ship_handler(logging)
        root.addHandler(handler)
    if _log_level:
        root.setLevel(_log_level)
    if _logger_levels:
        for item in _logger_levels.split("\0"):
            name, _, level = item.rpartition("=")
            logging.getLogger(name).setLevel(int(level))


def _fit_log(room: int, fields: tuple[Any, ...]) -> tuple[Any, ...]:
    """A LOG frame's fields, message and exception text cut to fit ``room``
    (and its extra fields left out, unless they are short)."""
    name, level, message, created, path, line, func, exc_text, extra = fields
    name, path, func = (_cut(_utf8(text), _MAX_NAME) for text in (name, path, func))
    if len(_utf8(extra)) > _MAX_NAME:
        extra = ""  # cut, it would not decode
    fixed = (name, path, func, extra)
    room -= 3 * 8 + 6 * _FIELD_LENGTH + sum(len(_utf8(t)) for t in fixed)
    text, exc = _utf8(message), _utf8(exc_text)
    text_room, exc_room = _share(max(room, 0), len(text), len(exc))
    cut_text, cut_exc = _cut(text, text_room), _cut(exc, exc_room)
    return name, level, cut_text, created, path, line, func, cut_exc, extra


class _ShipHandler:
    """Marker base; the real class derives from logging.Handler lazily."""


def _make_ship_handler(logging: Any) -> Any:
    from ._logextra import encode_extra

    standard = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    class ShipHandler(logging.Handler, _ShipHandler):  # type: ignore[misc]
        def emit(self, record: Any) -> None:
            channel = _channel
            if channel is None:
                return
            try:
                message = record.getMessage()
            except Exception:  # noqa: BLE001 -- bad format args: keep the template
                message = str(record.msg)
            exc_text = record.exc_text or ""
            if record.exc_info and not exc_text:
                exc_text = logging.Formatter().formatException(record.exc_info)
            fields = (
                record.name,
                record.levelno,
                message,
                record.created,
                record.pathname or "",
                record.lineno or 0,
                record.funcName or "",
                exc_text,
                encode_extra(record.__dict__, standard),
            )
            frame = encode(Kind.LOG, *fields)
            if len(frame) - HEADER.size > channel.max_frame:
                frame = encode(Kind.LOG, *_fit_log(channel.max_frame, fields))
            channel.post_log(frame)

    return ShipHandler()
