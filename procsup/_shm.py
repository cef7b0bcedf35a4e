"""Large buffers out of band: through shared memory instead of the socket.

Standard library only: a worker imports this module when a large payload
first comes its way, never for small ones (``procsup._child`` decides with
:func:`procsup._child_core.has_large_buffer`, which imports nothing).

A job's arguments or result that hold a ``bytes``, ``bytearray``,
``memoryview`` or pickle-protocol-5 buffer (a NumPy array) of at least
``shm_min_bytes`` travel as a small pickle that names them, plus one
*segment* that holds them side by side. A segment is a ``memfd``: an
anonymous file that no directory lists (nothing in ``/dev/shm``), whose
memory the kernel frees when the last descriptor and the last mapping of it
are gone -- so a process that dies, on either side, cannot leak one.

Every segment is created and owned by the parent, for one job, and closed
when that job ends however it ends (:meth:`Transfers.release`, from the
job's ``finally``). The worker opens the parent's descriptor through
``/proc/<parent pid>/fd/<n>``, checks that it is the segment it was told
about, maps it, and closes its descriptor at once:

* arguments: the parent writes the buffers into a segment and sends
  ``JOB_SHM`` (the pickle, the segment, the buffers' sizes);
* a result: the worker asks for a segment of the size it needs (``ALLOC``),
  the parent answers ``SHM``, the worker writes into it and sends
  ``RESULT_SHM``. The parent seals the segment's size first, so that a
  worker cannot shrink it under the parent's mapping (a ``SIGBUS``).

What the receiver rebuilds: ``bytes`` and ``bytearray`` as copies (one copy
out of the mapping, which is then unmapped); ``memoryview`` and protocol-5
buffers (NumPy arrays) as views of the mapping, which lives as long as they do.
"""

from __future__ import annotations

import io
import itertools
import os
import pickle
import struct

from ._child_core import _Interrupted, has_large_buffer
from ._wire import Kind, encode

TYPE_CHECKING = False  # not typing's: a worker imports this module
if TYPE_CHECKING:
    import mmap
    from collections.abc import Callable
    from typing import Any

__all__ = [
    "Transfers",
    "dumps",
    "job_loader",
    "layout",
    "loads",
    "result_frame",
]

_ALIGN = 64  # each buffer starts on a cache line (what NumPy aligns to)
_FIELDS = 256  # a JOB_SHM or RESULT_SHM body's bytes besides the payload and the sizes
_SIZE = struct.Struct("!Q")
_names = itertools.count()


# -- pickling: the large buffers by reference, the rest in the pickle -------------


class _Pickler(pickle.Pickler):
    """Pickles large buffers as persistent ids (indexes into ``buffers``)."""

    def __init__(self, file: io.BytesIO, min_bytes: int) -> None:
        super().__init__(file, 5)
        self.min_bytes = min_bytes
        self.buffers: list[memoryview] = []

    def persistent_id(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is bytes or kind is bytearray:
            if len(obj) < self.min_bytes:
                return None
            return ("b" if kind is bytes else "a", self._add(memoryview(obj)))
        if kind is memoryview:
            if obj.nbytes < self.min_bytes:
                return None
            view = obj if obj.c_contiguous else memoryview(obj.tobytes())
            return ("m", self._add(view.cast("B")), obj.format, obj.shape, obj.readonly)
        if kind is pickle.PickleBuffer:
            try:
                view = obj.raw()
            except BufferError:  # not contiguous: pickle copies it in band
                return None
            if view.nbytes < self.min_bytes:
                return None
            return ("p", self._add(view), view.readonly)
        return None

    def _add(self, view: memoryview) -> int:
        self.buffers.append(view)
        return len(self.buffers) - 1


def dumps(obj: Any, min_bytes: int) -> tuple[bytes, list[memoryview]]:
    """Pickle ``obj`` with its buffers of ``min_bytes`` or more left out;
    return the pickle and those buffers (flat byte views), in order."""
    file = io.BytesIO()
    pickler = _Pickler(file, min_bytes)
    pickler.dump(obj)
    return file.getvalue(), pickler.buffers


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, views: list[memoryview]) -> None:
        super().__init__(io.BytesIO(data))
        self.views = views

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid or pid[0] not in _REBUILD:
            raise pickle.UnpicklingError(f"unknown out-of-band reference {pid!r}")
        try:
            return _REBUILD[pid[0]](self.views[pid[1]], *pid[2:])
        except (IndexError, TypeError, ValueError) as exc:
            raise pickle.UnpicklingError(f"bad out-of-band reference {pid!r}: {exc}") from None


def _as_memoryview(view: memoryview, fmt: str, shape: tuple[int, ...], readonly: bool) -> Any:
    view = view.cast(fmt, shape) if shape else view.cast(fmt)  # type: ignore[call-overload]
    return view.toreadonly() if readonly else view


def _as_buffer(view: memoryview, readonly: bool) -> memoryview:
    return view.toreadonly() if readonly else view[:]  # not ours: loads releases ours


_REBUILD: dict[str, Callable[..., Any]] = {
    "b": bytes,
    "a": bytearray,
    "m": _as_memoryview,
    "p": _as_buffer,
}


def loads(data: bytes, mapping: mmap.mmap | None, sizes: list[int]) -> Any:
    """Unpickle what :func:`dumps` made, its buffers read from ``mapping``.

    The mapping is closed at once when nothing kept a view of it (the
    buffers were all copied out); else it lives as long as those views.
    """
    views = [] if mapping is None else _views(mapping, sizes)
    try:
        return _Unpickler(data, views).load()
    finally:
        for view in views:  # what was handed out derives from them and stays valid
            view.release()
        if mapping is not None:
            try:
                mapping.close()
            except BufferError:  # memoryviews or arrays of the result use it
                pass


def _views(mapping: mmap.mmap, sizes: list[int]) -> list[memoryview]:
    whole = memoryview(mapping)
    try:
        spans = zip(_offsets(sizes), sizes, strict=True)
        return [whole[start : start + size] for start, size in spans]
    finally:
        whole.release()


# -- layout: sizes on the wire, offsets in the segment -----------------------------


def layout(buffers: list[memoryview]) -> tuple[bytes, int]:
    """The buffers' sizes as sent, and the segment size they need."""
    sizes = [view.nbytes for view in buffers]
    return b"".join(_SIZE.pack(size) for size in sizes), _span(sizes)


def _fits(data: bytes, packed: bytes, size: int, limit: int) -> bool:
    """Whether the frame and the segment together stay within ``limit``
    (max_message_bytes bounds what one job moves, however it travels)."""
    return len(data) + len(packed) + _FIELDS + size <= limit


def _sizes(packed: bytes) -> list[int]:
    if len(packed) % _SIZE.size:
        raise ValueError("malformed buffer sizes")
    return [size for (size,) in _SIZE.iter_unpack(packed)]


def _offsets(sizes: list[int]) -> list[int]:
    offsets, end = [], 0
    for size in sizes:
        offsets.append(end)
        end += -(-size // _ALIGN) * _ALIGN
    return offsets


def _span(sizes: list[int]) -> int:
    return _offsets(sizes)[-1] + sizes[-1] if sizes else 0


def _write(fd: int, buffers: list[memoryview]) -> None:
    for start, view in zip(_offsets([v.nbytes for v in buffers]), buffers, strict=True):
        done = 0
        while done < view.nbytes:
            done += os.pwrite(fd, view[done:], start + done)


def _map(fd: int, size: int) -> mmap.mmap:
    import mmap

    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)  # one fault, not one a page
    return mmap.mmap(fd, size, flags=flags)


# -- the worker's side -----------------------------------------------------------------


def _open_parent_segment(pid: int, number: int, name: str, size: int) -> int:
    """Open the parent's segment ``name`` (its descriptor ``number``) and
    check that it is that segment, of at least ``size`` bytes."""
    fd = os.open(f"/proc/{pid}/fd/{number}", os.O_RDWR | os.O_CLOEXEC)
    try:
        found = os.readlink(f"/proc/self/fd/{fd}")
        if found != f"/memfd:{name} (deleted)" or os.fstat(fd).st_size < size:
            raise OSError(f"descriptor {number} of the parent is not segment {name!r}: {found}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def job_loader(
    pid: int, number: int, name: str, packed_sizes: bytes, data: bytes
) -> Callable[[], Any]:
    """For ``JOB_SHM``: what loads the job's ``(fn, args)`` (in the job's
    error handling, so that a failure is the job's error)."""

    def load() -> Any:
        sizes = _sizes(packed_sizes)
        fd = _open_parent_segment(pid, number, name, _span(sizes))
        try:
            mapping = _map(fd, _span(sizes))
        finally:
            os.close(fd)
        return loads(data, mapping, sizes)

    return load


def result_frame(
    send: Callable[[bytes], None],
    next_order: Callable[[], tuple[int, tuple[Any, ...]]],
    job_id: int,
    result: Any,
    min_bytes: int,
    limit: int,
) -> bytes | None:
    """``RESULT_SHM`` for a result with large buffers, through a segment the
    parent allocates on request; None to send it in band instead (it does
    not pickle, it is over ``limit``, or the segment cannot be opened:
    the in-band path then reports or carries it).

    Raises:
        SystemExit: the parent asked this worker to stop meanwhile.
    """
    try:
        data, buffers = dumps(result, min_bytes)
    except _Interrupted:
        raise
    except BaseException:  # noqa: BLE001 -- the in-band path reports it (SystemExit too)
        return None
    packed, size = layout(buffers)
    if not buffers or not _fits(data, packed, size, limit):
        return None
    send(encode(Kind.ALLOC, job_id, size))
    kind, fields = next_order()
    if kind == Kind.STOP:
        raise SystemExit(0)  # the parent closes this worker: the result is not wanted
    if kind != Kind.SHM or fields[0] != job_id:
        raise SystemExit(70)  # the parent broke the protocol
    _, pid, number, name = fields
    try:
        fd = _open_parent_segment(pid, number, name, size)
    except OSError:
        return None
    try:
        _write(fd, buffers)
    finally:
        os.close(fd)
    return encode(Kind.RESULT_SHM, job_id, data, packed)


# -- the parent's side ------------------------------------------------------------------


class _Segment:
    """One memfd of the parent's. Owned by the :class:`Transfers` that made it."""

    __slots__ = ("fd", "name", "size")

    def __init__(self, size: int) -> None:
        import fcntl

        self.name = f"procsup-{os.getpid()}-{next(_names)}"
        self.size = size
        self.fd = os.memfd_create(self.name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self.fd, size)
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        except BaseException:
            os.close(self.fd)
            raise


class Transfers:
    """The segments of one worker's current job, in the parent.

    Invariant: every segment this object made is in ``_segments`` until
    :meth:`release` closes it; the job's owner calls :meth:`release` when
    the job ends, however it ends.
    """

    def __init__(self, min_bytes: int | None, limit: int) -> None:
        self._min_bytes = min_bytes
        self._limit = limit
        self._segments: list[_Segment] = []
        self._result: _Segment | None = None  # allocated for the running job's result

    def job_frame(self, job_id: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> bytes | None:
        """``JOB_SHM`` when ``args`` hold large buffers; None to send the job
        in band (small, or it does not pickle: the in-band path reports that)."""
        min_bytes = self._min_bytes
        if min_bytes is None or not has_large_buffer(args, min_bytes):
            return None
        try:
            data, buffers = dumps((fn, args), min_bytes)
        except Exception:  # noqa: BLE001 -- the in-band path reports it
            return None
        packed, size = layout(buffers)
        if not buffers or not _fits(data, packed, size, self._limit):
            return None  # in band: the limit is reported there
        segment = self._new_segment(size)
        try:
            _write(segment.fd, buffers)
        except BaseException:
            self.release()
            raise
        return encode(Kind.JOB_SHM, job_id, os.getpid(), segment.fd, segment.name, packed, data)

    def alloc(self, job_id: int, size: int) -> bytes:
        """Answer the worker's ``ALLOC``: a segment for the result.

        Raises:
            ValueError: a second request for the job, or a size over the limit.
        """
        if self._result is not None or not 0 < size <= self._limit:
            raise ValueError(f"ALLOC of {size} bytes (limit {self._limit}) not allowed")
        self._result = segment = self._new_segment(size)
        return encode(Kind.SHM, job_id, os.getpid(), segment.fd, segment.name)

    def result_loader(self, packed_sizes: bytes) -> Callable[[bytes], Any]:
        """What unpickles a ``RESULT_SHM``'s payload, its buffers read from
        the segment of ``ALLOC`` (any failure raises from the loader)."""

        def load(data: bytes) -> Any:
            segment = self._result
            if segment is None:
                raise pickle.UnpicklingError("RESULT_SHM without a segment")
            sizes = _sizes(packed_sizes)
            if _span(sizes) > segment.size:
                raise pickle.UnpicklingError("RESULT_SHM's buffers overrun the segment")
            mapping = _map(segment.fd, segment.size) if sizes else None
            self.release()  # the mapping keeps what it needs
            return loads(data, mapping, sizes)

        return load

    def release(self) -> None:
        """Close every segment of the job (their memory goes once the
        worker's mappings and the result's views are gone too)."""
        segments, self._segments, self._result = self._segments, [], None
        for segment in segments:
            os.close(segment.fd)

    def _new_segment(self, size: int) -> _Segment:
        segment = _Segment(size)
        self._segments.append(segment)
        return segment
