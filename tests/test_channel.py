"""The parent's end of a worker's channel, below the process boundary: a
frame the socket cannot take at once goes out whole and in order, a closed
worker end is a BrokenResourceError, and a stuck control socket is never
sent half a frame."""

from __future__ import annotations

import os
import socket

import pytest
import trio
import trio.testing

from procsup._channel import ParentChannel
from procsup._wire import FrameError, Kind, encode

BIG = 1 << 30


def _read_exactly(fd: int, count: int) -> bytes:
    chunks = []
    while count:
        chunk = os.read(fd, min(count, 1 << 20))
        assert chunk, "EOF before everything arrived"
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("flush_task", ["started_after", "already_running"])
async def test_frames_the_socket_cannot_take_at_once_go_out_whole_and_in_order(
    flush_task: str,
) -> None:
    """A frame too large for the socket is partly sent, its rest queued; the
    frames sent after it go behind it, never interleaved: whether the flush
    task starts once they are all queued, or is already sending its rest."""
    first = encode(Kind.STOP)
    big = encode(Kind.JOB, 1, os.urandom(4 << 20))  # far more than a socket buffer
    after = [encode(Kind.JOB, n, b"small") for n in range(2, 5)]
    channel = ParentChannel(BIG, first)
    try:
        jobs_fd, _ = channel.child_fds
        expected = first + big + b"".join(after)
        async with trio.open_nursery() as nursery:
            if flush_task == "already_running":
                channel.start(nursery)
            channel.send_nowait(big)  # partly sent, the rest queued
            await trio.lowlevel.checkpoint()  # a running flush task is at work on it
            for frame in after:
                channel.send_nowait(frame)  # queued behind it, never interleaved
            if flush_task == "started_after":
                channel.start(nursery)  # now the flush task sends what waits
            received = await trio.to_thread.run_sync(_read_exactly, jobs_fd, len(expected))
        assert received == expected
    finally:
        channel.close()


async def test_a_closed_worker_end_is_a_broken_resource() -> None:
    channel = ParentChannel(BIG, b"")
    try:
        channel.child_spawned()  # the worker's ends are gone
        with pytest.raises(trio.BrokenResourceError):
            channel.send_nowait(encode(Kind.STOP))
        with pytest.raises(trio.BrokenResourceError):  # and stays so
            channel.send_nowait(encode(Kind.STOP))
    finally:
        channel.close()


async def test_a_full_control_socket_is_never_sent_half_a_frame() -> None:
    channel = ParentChannel(BIG, b"")
    try:
        ping = encode(Kind.PING, 1.5)
        sent = 0
        while channel.send_control(ping):  # nobody reads: a stuck control thread
            sent += 1
        assert sent > 0
        assert not channel.send_control(ping)  # given up on for good
        _, control_fd = channel.child_fds
        with socket.socket(fileno=os.dup(control_fd)) as control:
            control.setblocking(False)
            data = b""
            while True:
                try:
                    chunk = control.recv(1 << 16)
                except BlockingIOError:
                    break
                data += chunk
        assert data == ping * sent  # whole frames only
    finally:
        channel.close()


async def test_frames_split_between_receive_now_and_the_reader_arrive_whole_and_in_order() -> None:
    channel = ParentChannel(BIG, b"")
    got: list[tuple[int, tuple[object, ...]]] = []
    try:
        jobs_fd, _ = channel.child_fds
        first = encode(Kind.RESULT, 1, b"one")
        second = encode(Kind.RESULT, 2, b"two" * 100)
        channel.receive_now(lambda kind, fields: got.append((kind, fields)))  # nothing yet
        os.write(jobs_fd, first + second[:7])  # a frame and a half
        channel.receive_now(lambda kind, fields: got.append((kind, fields)))
        assert got == [(Kind.RESULT, (1, b"one"))]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(channel.receive_forever, lambda k, f: got.append((k, f)))
            await trio.testing.wait_all_tasks_blocked()
            os.write(jobs_fd, second[7:])  # the rest, to the reader task
            await trio.testing.wait_all_tasks_blocked()
            channel.child_spawned()  # EOF
        assert got == [(Kind.RESULT, (1, b"one")), (Kind.RESULT, (2, b"two" * 100))]
    finally:
        channel.close()


async def test_a_malformed_frame_met_by_receive_now_is_raised_once() -> None:
    channel = ParentChannel(BIG, b"")
    try:
        jobs_fd, _ = channel.child_fds
        os.write(jobs_fd, encode(Kind.JOB, 1, b"not from a child"))
        with pytest.raises(FrameError, match="unexpected message kind JOB"):
            channel.receive_now(lambda kind, fields: None)
        os.write(jobs_fd, encode(Kind.RESULT, 2, b"later"))
        channel.receive_now(lambda kind, fields: pytest.fail("input was given up"))
        with trio.fail_after(5):  # the reader task ends quietly: reported already
            await channel.receive_forever(lambda kind, fields: pytest.fail("given up"))
    finally:
        channel.close()
