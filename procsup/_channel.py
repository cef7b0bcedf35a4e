"""The parent's end of a worker's two socketpairs (jobs and control).

The jobs socket carries INIT, JOB and STOP to the worker's main thread, and
everything the worker says back. The control socket carries PING and CANCEL
to a thread of the worker's that reads it even while a job holds the main
thread: two sockets, so that the main thread reads its jobs itself instead
of waiting for a thread to hand them over (a wakeup per job).

Frames go out without waiting: a send that the jobs socket cannot take at
once is queued, in order, for a flush task started for the occasion (most
workers never need one). Frames come in through one ``wait_readable`` per
burst of data, received into one reusable buffer and parsed in place.
This keeps a job's round trip to one scheduler wakeup on each side: trio's
SocketStream (and a buffered stream over it) spend a scheduler round on
every call (benchmarks/where_time_goes.py shows what that costs).

A caller that has just sent a job reads what has already arrived itself
(:meth:`ParentChannel.receive_now`): a short job's answer is often there
by the time ``send`` returns (the kernel runs the woken worker at once), and
taking it then saves the reader task's wakeup and a trip through the
scheduler. Both readers share one inbox; the reader task only ever waits
between frames, so neither sees the other's half of one.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import trio

from ._wire import FROM_CHILD, HEADER, FrameError, decode_body, parse_header

__all__ = ["ParentChannel", "send_some"]

_RECV_CHUNK = 256 * 1024
# recv_into one buffer per trio run, shared by its channels: recv(n) allocates
# n bytes per call (at 256 KiB, an mmap and page faults per message), and a
# buffer per worker would cost each one-shot worker its zeroing. Safe to
# share within a run: every receiver copies what it got before its next await.
_landing: trio.lowlevel.RunVar[memoryview] = trio.lowlevel.RunVar("procsup_landing")


def _landing_buffer() -> memoryview:
    try:
        return _landing.get()
    except LookupError:
        buffer = memoryview(bytearray(_RECV_CHUNK))
        _landing.set(buffer)
        return buffer


def send_some(sock: socket.socket, data: bytes) -> int:
    """Send what the non-blocking ``sock`` takes of ``data`` now; return how
    much that was (0 when its buffer is full)."""
    try:
        return sock.send(data)
    except BlockingIOError:
        return 0


class ParentChannel:
    """Frames to and from one worker. One receiving task, any number of senders.

    Made before the worker's process, with both socketpairs and the first
    frame (INIT) already in the jobs socket, so that the child reads it as
    soon as it runs: our handling of the spawn and a round trip through the
    event loop stay off the path to warm. The spawner passes on
    :attr:`child_fds`; :meth:`child_spawned` then closes our copies;
    :meth:`start` gives the channel the nursery of its flush task (what did
    not fit before that waits for it).
    """

    def __init__(self, max_frame: int, first_frame: bytes) -> None:
        self._sock, child_sock = socket.socketpair()
        self._control, child_control = socket.socketpair()
        self._sock.setblocking(False)
        self._control.setblocking(False)
        # The child's ends, until it has them (then closed here: EOF must
        # come when the child's copies close, not ours).
        self._child_ends: tuple[socket.socket, ...] = (child_sock, child_control)
        self._control_broken = False
        self._max_frame = max_frame
        self._pending = bytearray()  # the unsent rest, in order; only the flush task sends it
        self._flusher: trio.Nursery | None = None  # set by start()
        self._flushing = False  # a flush task runs (it ends when _pending is empty)
        self._broken = False  # a send failed: the child closed its end
        # What has arrived and is not yet dispatched (the start of a frame);
        # whoever receives appends and parses here, the reader task or receive_now.
        self._inbox = bytearray()
        self._garbled = False  # receive_now met a malformed frame: the input is given up
        self.send_nowait(first_frame)

    @property
    def child_fds(self) -> tuple[int, int]:
        """The child's ends (jobs, control), for the spawner to pass on."""
        sock, control = self._child_ends
        return sock.fileno(), control.fileno()

    def child_spawned(self) -> None:
        """The spawn is over (done or failed): close our copies of the child's ends."""
        for end in self._child_ends:
            end.close()
        self._child_ends = ()

    def start(self, nursery: trio.Nursery) -> None:
        """Where to start a flush task when a frame does not go out at once;
        what is pending already goes now."""
        self._flusher = nursery
        if self._pending:
            self._start_flush()

    def send_nowait(self, frame: bytes) -> None:
        """Send a frame now, or queue the rest of it for the flush task.

        Raises:
            trio.BrokenResourceError: the worker closed its end (it is dying).
        """
        if self._broken:
            raise trio.BrokenResourceError("the worker's channel is closed")
        if not self._pending:
            try:
                sent = send_some(self._sock, frame)
            except OSError as exc:
                self._broken = True
                raise trio.BrokenResourceError(f"the worker's channel is closed: {exc}") from exc
            if sent == len(frame):
                return
            frame = frame[sent:]
        self._pending += frame
        if not self._flushing and self._flusher is not None:
            self._start_flush()

    def _start_flush(self) -> None:
        assert self._flusher is not None
        self._flushing = True
        self._flusher.start_soon(self._flush)

    def send_control(self, frame: bytes) -> bool:
        """Send a small PING or CANCEL frame whole, now; False if it cannot go.

        The worker's control thread drains its socket at once, so a full
        buffer means that thread is stuck: nothing more is sent on it (a
        partial frame would garble the rest), and the caller gives up on the
        worker.
        """
        if self._control_broken:
            return False
        try:
            sent = self._control.send(frame)
        except OSError:  # BlockingIOError included
            sent = 0
        if sent != len(frame):
            self._control_broken = True
        return not self._control_broken

    async def _flush(self) -> None:
        """Write what :meth:`send_nowait` could not, then end."""
        try:
            while self._pending:
                await trio.lowlevel.wait_writable(self._sock)
                try:
                    sent = self._sock.send(self._pending)
                except BlockingIOError:
                    continue
                except OSError:
                    self._broken = True
                    self._pending.clear()
                    return
                del self._pending[:sent]
        finally:
            self._flushing = False

    async def receive_forever(self, dispatch: Callable[[int, tuple[Any, ...]], None]) -> None:
        """Hand each complete frame to ``dispatch(kind, fields)`` until EOF.

        Raises:
            FrameError: a malformed, oversized or unexpected frame, or EOF in
                the middle of one.
        """
        buffer = self._inbox
        landing = _landing_buffer()
        while True:
            await trio.lowlevel.wait_readable(self._sock)
            if self._garbled:
                return  # receive_now reported it
            try:
                received = self._sock.recv_into(landing)
            except BlockingIOError:
                continue
            except OSError:
                received = 0
            if not received:
                if buffer:
                    raise FrameError("channel closed in the middle of a frame")
                return
            buffer += landing[:received]
            del buffer[: self._parse(buffer, dispatch)]

    def receive_now(self, dispatch: Callable[[int, tuple[Any, ...]], None]) -> None:
        """Dispatch the complete frames that have already arrived, without
        waiting (one ``recv``); EOF and errors are left to the reader task.

        Raises:
            FrameError: a malformed, oversized or unexpected frame (the
                reader task then ends without reporting it again).
        """
        if self._garbled:
            return
        landing = _landing_buffer()
        try:
            received = self._sock.recv_into(landing)
        except OSError:  # BlockingIOError: nothing yet
            return
        if not received:
            return  # EOF: the reader task sees it too
        buffer = self._inbox
        buffer += landing[:received]
        try:
            del buffer[: self._parse(buffer, dispatch)]
        except FrameError:
            self._garbled = True
            buffer.clear()
            raise

    def _parse(self, buffer: bytearray, dispatch: Callable[[int, tuple[Any, ...]], None]) -> int:
        """Dispatch the complete frames at the start of buffer; return their length."""
        pos = 0
        size_of_header = HEADER.size
        while len(buffer) - pos >= size_of_header:
            kind, size = parse_header(buffer, self._max_frame, FROM_CHILD, pos)
            end = pos + size_of_header + size
            if len(buffer) < end:
                break
            dispatch(kind, decode_body(kind, buffer, pos + size_of_header, end))
            pos = end
        return pos

    def close(self) -> None:
        """Close the parent's ends. No task may be using the channel any more."""
        self.child_spawned()
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()
        self._control.close()
