"""The private channel's framing and message formats.

Standard library only: both sides import this module.

A frame is ``!IB`` (body length, message kind) followed by the body. Every
kind has a fixed schema of typed fields, checked strictly on decode: control
fields are integers, floats and UTF-8 strings and are never unpickled. Only
``bytes`` fields named *payload* carry pickles (a job's callable and
arguments, its result or exception, the initializer), and those are unpickled
by the code that owns that job, never here.
"""

from __future__ import annotations

import struct

TYPE_CHECKING = False  # not typing's: the worker must not pay for importing it
if TYPE_CHECKING:
    from typing import Final

__all__ = [
    "DEFAULT_MAX_FRAME",
    "HEADER",
    "MAX_BODY",
    "TO_CONTROL",
    "TO_MAIN",
    "FrameError",
    "Kind",
    "decode_body",
    "encode",
    "max_payload",
    "parse_header",
]

HEADER: Final = struct.Struct("!IB")
# The limit, max_message_bytes, is on a frame's body: the length its header
# carries, checked by parse_header on receipt and by every sender before it
# sends. MAX_BODY is the most that 4-byte length can say.
DEFAULT_MAX_FRAME: Final = 256 * 1024 * 1024
MAX_BODY: Final = 2**32 - 1

_INT = struct.Struct("!q")
_FLOAT = struct.Struct("!d")
_LEN = struct.Struct("!I")

Field = int | float | str | bytes


class FrameError(Exception):
    """A frame broke the schema. The receiver turns this into a ProtocolError."""


class Kind:
    """Message kinds. Plain ints, not an enum: the child imports this module and
    ``enum`` costs it milliseconds at start."""

    # parent -> child
    INIT = 1
    JOB = 2
    CANCEL = 3
    PING = 4
    STOP = 5
    JOB_SHM = 6
    SHM = 7
    BATCH = 8
    TRIM = 9
    # child -> parent
    READY = 20
    INIT_FAILED = 21
    RESULT = 22
    ERROR = 23
    PONG = 24
    LOG = 25
    ALLOC = 26
    RESULT_SHM = 27
    RETIRE = 28
    IMPORT_FAILED = 29
    TRIMMED = 30


# i: int64, f: float64, s: UTF-8 string, b: bytes
SCHEMAS: Final[dict[int, str]] = {
    # initializer payload, max_jobs (0 = no limit), log level, max frame,
    # shm_min_bytes (0 = never), worker_loop ("" = none: a fresh trio.run per
    # async call), then the start-up fields (procsup._startup): slot, ps title,
    # top name, env updates, logger levels, capture flag
    # ... learned job modules (one a line; procsup._learn), before the start-up fields
    Kind.INIT: "biiiississbsi",
    Kind.JOB: "ib",  # job id, payload (callable and arguments)
    # job id, parent pid, segment fd and name, buffer sizes, payload (see _shm)
    Kind.JOB_SHM: "iiisbb",
    Kind.SHM: "iiis",  # job id, parent pid, segment fd and name: the answer to ALLOC
    # first job id, count, payload: (fn, [each item's pickled argument]); the
    # worker runs and answers them one by one, as jobs first id, first id + 1, ...
    Kind.BATCH: "iib",
    # running job id, last id: give back the batch jobs after the running one, up to the last
    Kind.TRIM: "ii",
    Kind.CANCEL: "i",  # job id
    Kind.PING: "f",  # the parent's clock, echoed back
    Kind.STOP: "",
    Kind.READY: "i",  # pid
    Kind.INIT_FAILED: "sssb",  # type name, message, traceback, exception payload
    Kind.RESULT: "ib",  # job id, result payload
    Kind.ERROR: "isssb",  # job id, type name, message, traceback, exception payload
    Kind.PONG: "f",
    # name, level, message, created, path, line, func, exc text, extra (procsup._logextra)
    Kind.LOG: "sisfsisss",
    Kind.ALLOC: "ii",  # job id, bytes: a segment for the job's result, please
    Kind.RESULT_SHM: "ibb",  # job id, result payload, buffer sizes (in the ALLOC segment)
    Kind.IMPORT_FAILED: "s",  # before READY: learned modules it could not import, one a line
    Kind.RETIRE: "s",  # why the worker asks to be stopped (a background task failed)
    Kind.TRIMMED: "i",  # the answer to TRIM: batch jobs from this id on will never begin
}

# The parent writes INIT, JOB (JOB_SHM, SHM, BATCH) and STOP on the jobs socket, which the worker's
# main thread reads itself, and PING, CANCEL and TRIM on the control socket, which a
# thread reads even while a job holds the main thread. The worker writes
# everything on the jobs socket.
TO_MAIN: Final = frozenset({Kind.INIT, Kind.JOB, Kind.JOB_SHM, Kind.SHM, Kind.BATCH, Kind.STOP})
TO_CONTROL: Final = frozenset({Kind.PING, Kind.CANCEL, Kind.TRIM})
FROM_PARENT: Final = TO_MAIN | TO_CONTROL
FROM_CHILD: Final = frozenset(SCHEMAS) - FROM_PARENT
NAMES: Final = {v: k for k, v in vars(Kind).items() if isinstance(v, int)}


# JOB and RESULT (id, payload) are every job's round trip: one pack each way.
_ID_PAYLOAD = struct.Struct("!qI")


def max_payload(max_frame: int) -> int:
    """The largest payload of a JOB or RESULT frame whose body fits ``max_frame``."""
    return max_frame - _ID_PAYLOAD.size


def encode(kind: int, *fields: Field) -> bytes:
    """Build one frame. Fields must match the kind's schema."""
    schema = SCHEMAS[kind]
    if schema == "ib" and len(fields) == 2:
        job_id, payload = fields
        if isinstance(job_id, int) and isinstance(payload, bytes):
            head = HEADER.pack(_ID_PAYLOAD.size + len(payload), kind)
            return head + _ID_PAYLOAD.pack(job_id, len(payload)) + payload
    if len(fields) != len(schema):
        raise TypeError(f"{NAMES[kind]} takes {len(schema)} fields, got {len(fields)}")
    parts: list[bytes] = []
    for code, value in zip(schema, fields, strict=True):
        if code == "i":
            parts.append(_INT.pack(value))
        elif code == "f":
            parts.append(_FLOAT.pack(value))
        else:
            if code == "s" and isinstance(value, str):
                data = value.encode("utf-8", "replace")
            elif code == "b" and isinstance(value, bytes):
                data = value
            else:
                raise TypeError(f"{NAMES[kind]}: field {code!r} got {type(value).__name__}")
            parts.append(_LEN.pack(len(data)))
            parts.append(data)
    body = b"".join(parts)
    return HEADER.pack(len(body), kind) + body


def parse_header(
    data: bytes | bytearray, max_frame: int, allowed: frozenset[int], start: int = 0
) -> tuple[int, int]:
    """Return (kind, body length) of the header at ``data[start:]``, or raise
    FrameError for a bad header."""
    length, kind = HEADER.unpack_from(data, start)
    if kind not in allowed:
        name = NAMES.get(kind, f"unknown kind {kind}")
        raise FrameError(f"unexpected message kind {name}")
    if length > max_frame:
        raise FrameError(f"{NAMES[kind]} frame of {length} bytes exceeds the limit of {max_frame}")
    return kind, length


def decode_body(
    kind: int, data: bytes | bytearray, start: int = 0, end: int | None = None
) -> tuple[Field, ...]:
    """Decode the body ``data[start:end]`` strictly against its kind's schema.

    The returned fields are copies: ``data`` may be reused at once.
    """
    if end is None:
        end = len(data)
    if SCHEMAS[kind] == "ib":  # every job's JOB and RESULT
        return _decode_id_payload(kind, data, start, end)
    with memoryview(data) as whole:  # released on return: data may then be resized
        return _decode_view(kind, whole[start:end])


_SMALL = 4096  # a payload this size is copied by slicing; a larger one through a view


def _decode_id_payload(
    kind: int, data: bytes | bytearray, start: int, end: int
) -> tuple[Field, ...]:
    if end - start < _ID_PAYLOAD.size:
        raise FrameError(f"{NAMES[kind]}: malformed body (too short)")
    job_id, size = _ID_PAYLOAD.unpack_from(data, start)
    begin = start + _ID_PAYLOAD.size
    if begin + size != end:
        raise FrameError(f"{NAMES[kind]}: payload length does not match the frame")
    if size <= _SMALL:
        return job_id, bytes(data[begin:end])
    with memoryview(data) as whole:  # one copy, not a slice and then its bytes
        return job_id, whole[begin:end].tobytes()


def _decode_view(kind: int, view: memoryview) -> tuple[Field, ...]:
    pos = 0
    out: list[Field] = []
    try:
        for code in SCHEMAS[kind]:
            if code == "i":
                out.append(_INT.unpack_from(view, pos)[0])
                pos += 8
            elif code == "f":
                out.append(_FLOAT.unpack_from(view, pos)[0])
                pos += 8
            else:
                (size,) = _LEN.unpack_from(view, pos)
                pos += 4
                if pos + size > len(view):
                    raise FrameError(f"{NAMES[kind]}: field overruns the frame")
                chunk = view[pos : pos + size].tobytes()
                pos += size
                out.append(chunk.decode("utf-8") if code == "s" else chunk)
    except (struct.error, UnicodeDecodeError) as exc:
        raise FrameError(f"{NAMES[kind]}: malformed body ({exc})") from None
    if pos != len(view):
        raise FrameError(f"{NAMES[kind]}: {len(view) - pos} trailing bytes")
    return tuple(out)
