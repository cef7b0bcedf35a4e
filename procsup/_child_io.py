"""The worker's two ends of its sockets: :class:`_Channel` writes every
frame the worker sends (under a lock, logs by a writer thread, pings' answers
first), :class:`_FrameReader` reads and checks the frames sent to it.

Standard library only (the child side: see :mod:`procsup._child`).
"""

from __future__ import annotations

import _thread
import os
from _collections import deque  # type: ignore[import-not-found,unused-ignore]
from _queue import SimpleQueue

from ._wire import HEADER, MAX_BODY, Kind, decode_body, encode, parse_header

TYPE_CHECKING = False  # not typing's: see _child
if TYPE_CHECKING:
    from typing import Any

__all__ = ["_Channel", "_FrameReader"]

_MAX_PENDING_LOGS = 10_000
# One page: a forked worker pays a page fault for each page it touches, and
# most frames are small (larger ones are read straight into their own bytes).
_LANDING_BYTES = 4096


class _Channel:
    """The child's end of the jobs socket. One frame is written at a time,
    under a lock. Three kinds of sender:

    * answers (READY, RESULT, ...) go after the log records queued before
      them, keeping their order;
    * log records queue up (never blocking the job) for a writer thread;
    * health answers (PONG) go at the next frame boundary, ahead of every
      queued record: whoever holds the lock writes them before its next
      frame, and every release looks again, so none is stranded.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.max_frame = MAX_BODY  # until INIT says max_message_bytes
        self._lock = _thread.allocate_lock()  # held while one frame (or a queue's turn) is written
        self._logs: deque[bytes] = deque()
        self._urgent: deque[bytes] = deque()  # PONGs; appended without the lock
        self._wake: SimpleQueue[None] | None = None  # wakes the log writer thread
        self._dropped_lock = _thread.allocate_lock()  # held for a counter update only
        self._dropped_logs = 0

    def send(self, frame: bytes) -> None:
        """Send an answer, after the log records queued before it."""
        self._lock.acquire()
        try:
            if self._logs or self._dropped_logs:
                self._drain_logs(len(self._logs))
            if self._urgent:
                self._write_urgent()
            self._write(frame)
        finally:
            self._unlock()

    def send_urgent(self, frame: bytes) -> None:
        """Send a health answer ahead of queued records; never waits for them."""
        self._urgent.append(frame)
        self._take_urgent()

    def post_log(self, frame: bytes) -> None:
        """Queue a log frame; never blocks. Past a bound, records are dropped;
        the parent is told how many."""
        if len(self._logs) >= _MAX_PENDING_LOGS:
            with self._dropped_lock:
                self._dropped_logs += 1
            return
        self._logs.append(frame)
        if self._wake is None:
            self._wake = SimpleQueue()
            _thread.start_new_thread(self._write_logs_forever, (self._wake,))
        self._wake.put(None)

    def flush(self, count: int | None = None) -> None:
        """Write the queued records (the first ``count`` of them)."""
        self._lock.acquire()
        try:
            self._drain_logs(len(self._logs) if count is None else count)
        finally:
            self._unlock()

    def _write_logs_forever(self, wake: SimpleQueue[None]) -> None:
        while True:
            wake.get()
            try:
                # What is queued now, then the lock goes back: a job that
                # logs faster than the channel carries never holds it forever.
                self.flush(len(self._logs))
            except OSError:
                return

    def _drain_logs(self, count: int) -> None:
        logs = self._logs
        for _ in range(min(count, len(logs))):
            if self._urgent:
                self._write_urgent()
            self._write(logs.popleft())
        if self._dropped_logs:
            with self._dropped_lock:
                dropped, self._dropped_logs = self._dropped_logs, 0
            self._write(_dropped_logs_frame(dropped))

    def _write_urgent(self) -> None:
        urgent = self._urgent
        while urgent:
            self._write(urgent.popleft())

    def _unlock(self) -> None:
        self._lock.release()
        self._take_urgent()

    def _take_urgent(self) -> None:
        # A health answer queued after the holder last looked is ours to send;
        # if another thread holds the lock, its release looks again.
        while self._urgent and self._lock.acquire(False):
            try:
                self._write_urgent()
            finally:
                self._lock.release()

    def _write(self, data: bytes) -> None:
        written = os.write(self.fd, data)
        if written < len(data):  # a large frame: the rest in as many writes as it takes
            view = memoryview(data)[written:]
            while view:
                view = view[os.write(self.fd, view) :]


def _dropped_logs_frame(count: int) -> bytes:
    import time

    message = (
        f"{count} log record{'s' if count != 1 else ''} dropped: more than "
        f"{_MAX_PENDING_LOGS} were waiting to be sent (the job logs faster than the "
        "channel carries)"
    )
    return encode(Kind.LOG, "procsup", 30, message, time.time(), "", 0, "", "", "")


class _FrameReader:
    """Frames from one socket, for one thread: each read takes all that has
    arrived (a header and its body in one system call, mostly)."""

    def __init__(self, fd: int, allowed: frozenset[int], channel: _Channel) -> None:
        self._fd = fd
        self._allowed = allowed
        self._channel = channel  # for its max_frame, set by INIT
        self._buffer = bytearray()
        self._landing = memoryview(bytearray(_LANDING_BYTES))

    def next(self) -> tuple[int, tuple[Any, ...]] | None:
        """The next frame as (kind, fields); None on EOF between frames.

        Raises:
            FrameError: a malformed frame.
            EOFError: EOF in the middle of a frame.
        """
        buffer = self._buffer
        while True:
            need = HEADER.size
            if len(buffer) >= need:
                kind, size = parse_header(buffer, self._channel.max_frame, self._allowed)
                need += size
                if len(buffer) >= need:
                    fields = decode_body(kind, buffer, HEADER.size, need)
                    del buffer[:need]
                    return kind, fields
            if not self._read(need - len(buffer)):
                if buffer:
                    raise EOFError("channel closed mid-frame")
                return None

    def _read(self, wanted: int) -> int:
        if wanted > len(self._landing):  # a large frame: fewer, larger reads
            data = os.read(self._fd, min(wanted, 1 << 20))
            self._buffer += data
            return len(data)
        count = os.readv(self._fd, [self._landing])
        self._buffer += self._landing[:count]
        return count
