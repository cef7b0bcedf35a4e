"""The wire format below the process boundary: every kind round-trips, every
malformed frame is refused, and nothing but FrameError (EOFError, for a cut
frame, on the child's side) ever comes out of either side's decoder, whatever
bytes arrive: random ones, or valid frames mutated.

Both decoders run on real sockets: the parent's ParentChannel.receive_forever
under trio, the child's _FrameReader on a socketpair end, as in a worker.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from procsup._channel import ParentChannel
from procsup._child_io import _Channel, _FrameReader
from procsup._wire import (
    FROM_CHILD,
    HEADER,
    SCHEMAS,
    TO_CONTROL,
    TO_MAIN,
    FrameError,
    Kind,
    decode_body,
    encode,
    max_payload,
    parse_header,
)

MAX = 64 * 1024  # max_message_bytes of both sides here
ANY_KIND = frozenset(SCHEMAS)
_LEN = struct.Struct("!I")

Frames = list[tuple[int, tuple[Any, ...]]]


# -- the two decoders, on real sockets ----------------------------------------


def child_decode(data: bytes, allowed: frozenset[int] = TO_MAIN) -> Frames:
    """What a worker's reader makes of ``data`` followed by EOF."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(data)  # small enough for the socket's buffer
        theirs.shutdown(socket.SHUT_WR)
        channel = _Channel(ours.fileno())
        channel.max_frame = MAX
        reader = _FrameReader(ours.fileno(), allowed, channel)
        frames = []
        while (frame := reader.next()) is not None:
            frames.append(frame)
        return frames


def parent_decode(data: bytes) -> Frames:
    """What the parent's channel makes of ``data`` from a worker, then EOF."""

    async def main() -> Frames:
        channel = ParentChannel(MAX, b"")
        frames: Frames = []
        try:
            jobs_fd, _ = channel.child_fds
            with socket.socket(fileno=os.dup(jobs_fd)) as child_end:
                child_end.sendall(data)
            channel.child_spawned()  # the worker's ends close: EOF after the data
            await channel.receive_forever(lambda kind, fields: frames.append((kind, fields)))
        finally:
            channel.close()
        return frames

    return trio.run(main)


def decode_or_refuse(decode: Any, data: bytes, refusals: tuple[type[Exception], ...]) -> None:
    try:
        decode(data)
    except refusals:
        pass


# -- strategies -----------------------------------------------------------------

_FIELDS = {
    "i": st.integers(-(2**63), 2**63 - 1),
    "f": st.floats(allow_nan=False),
    "s": st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
    "b": st.binary(max_size=100),
}


def frames_of(kinds: frozenset[int]) -> st.SearchStrategy[tuple[int, tuple[Any, ...]]]:
    return st.sampled_from(sorted(kinds)).flatmap(
        lambda kind: st.tuples(st.just(kind), st.tuples(*(_FIELDS[c] for c in SCHEMAS[kind])))
    )


@st.composite
def mutated(draw: st.DrawFn, kinds: frozenset[int]) -> bytes:
    """Valid frames of ``kinds``, then a few bytes flipped, cut, added or removed."""
    frames = draw(st.lists(frames_of(kinds), min_size=1, max_size=3))
    data = bytearray(b"".join(encode(kind, *fields) for kind, fields in frames))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, len(data)))
        how = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if how == "flip" and where < len(data):
            data[where] ^= draw(st.integers(1, 255))
        elif how == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
        elif how == "delete":
            del data[where : where + draw(st.integers(1, 8))]
        else:
            del data[where:]
    return bytes(data)


_PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- round trips ------------------------------------------------------------------


@given(frames_of(ANY_KIND))
def test_every_kind_round_trips(frame: tuple[int, tuple[Any, ...]]) -> None:
    kind, fields = frame
    data = encode(kind, *fields)
    assert parse_header(data, MAX, ANY_KIND) == (kind, len(data) - HEADER.size)
    assert decode_body(kind, data, HEADER.size) == fields


@_PROPERTY
@given(st.lists(frames_of(FROM_CHILD), max_size=4))
def test_the_parent_decodes_what_a_worker_sends(frames: Frames) -> None:
    assert parent_decode(b"".join(encode(k, *f) for k, f in frames)) == frames


@_PROPERTY
@given(st.lists(frames_of(TO_MAIN), max_size=4))
def test_a_worker_decodes_what_the_parent_sends(frames: Frames) -> None:
    assert child_decode(b"".join(encode(k, *f) for k, f in frames)) == frames


# -- only FrameError, whatever arrives ----------------------------------------------


@_PROPERTY
@given(st.binary(max_size=512))
def test_random_bytes_give_the_parent_frames_or_a_frame_error(data: bytes) -> None:
    decode_or_refuse(parent_decode, data, (FrameError,))


@_PROPERTY
@given(st.binary(max_size=512))
def test_random_bytes_give_a_worker_frames_or_a_frame_error(data: bytes) -> None:
    decode_or_refuse(child_decode, data, (FrameError, EOFError))


@_PROPERTY
@given(mutated(FROM_CHILD))
def test_mutated_frames_give_the_parent_frames_or_a_frame_error(data: bytes) -> None:
    decode_or_refuse(parent_decode, data, (FrameError,))


@_PROPERTY
@given(mutated(TO_MAIN))
def test_mutated_frames_give_a_worker_frames_or_a_frame_error(data: bytes) -> None:
    decode_or_refuse(child_decode, data, (FrameError, EOFError))


@_PROPERTY
@given(mutated(TO_CONTROL))
def test_mutated_control_frames_give_a_worker_frames_or_a_frame_error(data: bytes) -> None:
    decode_or_refuse(lambda d: child_decode(d, TO_CONTROL), data, (FrameError, EOFError))


# -- strict rejection, case by case ------------------------------------------------


def _frame(kind: int, body: bytes) -> bytes:
    return HEADER.pack(len(body), kind) + body


def _body(kind: int, *fields: Any) -> bytes:
    return encode(kind, *fields)[HEADER.size :]


MALFORMED = [
    # (what, kind, body, phrase)
    ("overrun", Kind.INIT_FAILED, _LEN.pack(100) + b"short", "overruns"),
    ("trailing bytes", Kind.PONG, _body(Kind.PONG, 1.0) + b"\0", "trailing"),
    ("bad UTF-8", Kind.RETIRE, _LEN.pack(2) + b"\xff\xfe", "malformed"),
    ("short integer", Kind.READY, b"\0\0\0", "malformed"),
    ("payload overrun", Kind.RESULT, _body(Kind.RESULT, 1, b"abc")[:-1], "does not match"),
    ("payload short", Kind.RESULT, _body(Kind.RESULT, 1, b"abc") + b"d", "does not match"),
    ("no payload length", Kind.ERROR, b"\0" * 7, "malformed"),
]


@pytest.mark.parametrize(
    ("what", "kind", "body", "phrase"), MALFORMED, ids=[m[0] for m in MALFORMED]
)
def test_a_malformed_body_is_refused_by_the_parent(
    what: str, kind: int, body: bytes, phrase: str
) -> None:
    with pytest.raises(FrameError, match=phrase):
        decode_body(kind, body)
    with pytest.raises(FrameError, match=phrase):
        parent_decode(_frame(kind, body))


@pytest.mark.parametrize(
    ("kind", "body", "phrase"),
    [
        (Kind.JOB, _body(Kind.JOB, 1, b"abc") + b"!", "does not match"),
        (Kind.INIT, b"\0" * 3, "malformed"),
        (Kind.STOP, b"\0", "trailing"),
    ],
)
def test_a_malformed_body_is_refused_by_a_worker(kind: int, body: bytes, phrase: str) -> None:
    with pytest.raises(FrameError, match=phrase):
        child_decode(_frame(kind, body))


@pytest.mark.parametrize(
    ("kind", "name"), [(Kind.JOB, "JOB"), (Kind.PING, "PING"), (99, "unknown kind 99")]
)
def test_a_kind_the_parent_does_not_take_is_refused(kind: int, name: str) -> None:
    with pytest.raises(FrameError, match=f"unexpected message kind {name}"):
        parent_decode(_frame(kind, b""))


@pytest.mark.parametrize(
    ("data", "allowed", "name"),
    [
        (encode(Kind.PING, 1.0), TO_MAIN, "PING"),  # control, on the jobs socket
        (encode(Kind.STOP), TO_CONTROL, "STOP"),  # jobs, on the control socket
        (encode(Kind.RESULT, 1, b""), TO_MAIN, "RESULT"),  # the worker's own kind
        (_frame(0, b""), TO_MAIN, "unknown kind 0"),
    ],
)
def test_a_kind_not_allowed_on_that_socket_is_refused_by_a_worker(
    data: bytes, allowed: frozenset[int], name: str
) -> None:
    with pytest.raises(FrameError, match=f"unexpected message kind {name}"):
        child_decode(data, allowed)


def test_a_length_above_the_cap_is_refused_from_the_header() -> None:
    # Only the header arrives: refused before any body is waited for.
    header = HEADER.pack(MAX + 1, Kind.RESULT)
    with pytest.raises(FrameError, match=f"exceeds the limit of {MAX}"):
        parent_decode(header)
    with pytest.raises(FrameError, match=f"exceeds the limit of {MAX}"):
        child_decode(HEADER.pack(MAX + 1, Kind.JOB))
    # and the largest that fits is a frame like any other
    payload = b"x" * max_payload(MAX)
    assert parent_decode(encode(Kind.RESULT, 7, payload)) == [(Kind.RESULT, (7, payload))]


def test_a_frame_cut_by_eof_is_refused() -> None:
    data = encode(Kind.RESULT, 1, b"abcdef")[:-2]
    with pytest.raises(FrameError, match="middle of a frame"):
        parent_decode(data)
    with pytest.raises(EOFError):
        child_decode(encode(Kind.JOB, 1, b"abcdef")[:-2])


def test_encode_refuses_fields_that_break_the_schema() -> None:
    with pytest.raises(TypeError, match="takes 1 fields"):
        encode(Kind.READY)
    with pytest.raises(TypeError, match="got bytes"):
        encode(Kind.RETIRE, b"bytes where a string goes")


def test_the_design_page_lists_every_kind_as_the_wire_has_it() -> None:
    from pathlib import Path

    from procsup._wire import FROM_PARENT, NAMES, SCHEMAS

    page = Path(__file__).parent.parent / "docs" / "design.rst"
    rows = {}
    for line in page.read_text().splitlines():
        words = line.split()
        if len(words) >= 5 and words[0].isupper() and words[1].isdigit() and words[3] == "->":
            schema = words[5] if words[5].isalpha() and words[5].islower() else ""
            rows[words[0]] = (int(words[1]), words[2], schema)
    expected = {
        NAMES[kind]: (kind, "parent" if kind in FROM_PARENT else "child", schema)
        for kind, schema in SCHEMAS.items()
    }
    assert rows == expected
