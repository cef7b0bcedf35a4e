"""A worker's stdout and stderr as log records (``capture_output=True``).

Child side: standard library only, imported only when the option is on.

File descriptors 1 and 2 become pipes, so whatever writes to them -- print,
a C library, a subprocess that inherits them -- is captured. One thread per
pipe cuts what it reads into lines and posts each as a LOG frame on the
``procsup.worker.stdout`` (INFO) or ``procsup.worker.stderr`` (WARNING)
logger; the parent adds the worker's pid and slot. Posting never blocks:
the channel's bound on waiting log frames applies, and past it lines are
dropped and counted (see ``_Channel.post_log``).
"""

from __future__ import annotations

import _thread
import os
import sys
from time import time

from ._wire import Kind, encode

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    PostLog = Callable[[bytes], None]  # the channel's post_log: no import of _child

__all__ = ["capture_output", "stop_capture"]

# A longer line is sent in pieces of this many bytes: the bound on waiting
# frames then bounds memory too.
MAX_LINE = 16 * 1024
# At exit, how long the readers may take to pass on what is still in the pipes.
_EXIT_GRACE = 0.5
_STREAMS = ((1, "procsup.worker.stdout", 20), (2, "procsup.worker.stderr", 30))

_saved: list[tuple[int, int, _thread.LockType]] = []  # (fd, its original copy, reader running)


def capture_output(post_log: PostLog) -> None:
    """Point fds 1 and 2 at pipes read by a thread each, their lines posted
    through ``post_log`` (the channel's)."""
    if _saved:
        return
    for fd, name, level in _STREAMS:
        read_end, write_end = os.pipe()
        original = os.dup(fd)
        os.set_inheritable(original, False)
        os.dup2(write_end, fd)  # fd itself stays inheritable: subprocesses are captured too
        os.close(write_end)
        running = _thread.allocate_lock()
        running.acquire()
        _saved.append((fd, original, running))
        _thread.start_new_thread(_read_lines, (post_log, read_end, name, level, running))
    stdout = sys.stdout
    if stdout is not None and hasattr(stdout, "reconfigure"):
        # Block-buffered when it started on a pipe or a file: a line at a time now.
        stdout.reconfigure(line_buffering=True)


def stop_capture() -> None:
    """Give fds 1 and 2 back and wait (bounded) until the readers have posted
    what was written before; called on the way out, before the last flush."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
    while _saved:
        fd, original, running = _saved.pop()
        os.dup2(original, fd)  # closes our write end: the reader sees EOF
        os.close(original)
        # A subprocess may still hold the pipe open: then do not wait for it.
        if running.acquire(True, _EXIT_GRACE):
            running.release()


def _read_lines(
    post_log: PostLog, fd: int, name: str, level: int, running: _thread.LockType
) -> None:
    pending = b""
    try:
        while True:
            try:
                data = os.read(fd, 65536)
            except InterruptedError:
                continue
            if not data:
                break
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                _post(post_log, name, level, line)
            if len(pending) >= MAX_LINE:
                _post(post_log, name, level, pending)
                pending = b""
        if pending:
            _post(post_log, name, level, pending)
    except OSError:
        pass
    finally:
        os.close(fd)
        running.release()


def _post(post_log: PostLog, name: str, level: int, line: bytes) -> None:
    """One record per line; a longer line in pieces of MAX_LINE bytes."""
    if line.endswith(b"\r"):
        line = line[:-1]
    for start in range(0, len(line) or 1, MAX_LINE):
        text = line[start : start + MAX_LINE].decode("utf-8", "replace")
        post_log(encode(Kind.LOG, name, level, text, time(), "", 0, "", "", ""))
