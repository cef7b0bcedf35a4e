"""A log record's ``extra`` fields on the wire, for both sides.

Standard library only and importing nothing: the child imports this module
once user code has imported ``logging``.

The LOG frame's last field is a string of NUL-separated pairs: a key, then a
value as one type letter and its text -- ``s`` (str), ``i`` (int), ``f``
(float), ``b`` (bool), ``n`` (None). Those plain values arrive with their
type; any other value arrives as its ``repr()`` (cut to ``_MAX_REPR``), a
string. The parent decodes strictly and drops what it cannot read, so a
worker can neither forge a record's standard attributes nor break logging.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection

__all__ = ["decode_extra", "encode_extra", "record_extra"]

_MAX_REPR = 1000
_CODES = {str: "s", int: "i", float: "f", bool: "b", type(None): "n"}


def encode_extra(attributes: dict[str, object], standard: Collection[str]) -> str:
    """The fields of a record's ``__dict__`` that are not in ``standard``
    (what ``extra=`` added), encoded."""
    parts: list[str] = []
    for key, value in attributes.items():
        if key in standard or "\0" in key:
            continue
        code = _CODES.get(type(value))
        if code is None:
            code, text = "s", _safe_repr(value)
        elif code == "n":
            text = ""
        else:
            text = str(value) if code != "f" else repr(value)
        if "\0" not in text:
            parts.append(key)
            parts.append(code + text)
    return "\0".join(parts)


def _safe_repr(value: object) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 -- a broken __repr__ must not lose the record
        text = f"<unrepresentable {type(value).__name__}>"
    return text[:_MAX_REPR]


def decode_extra(text: str) -> dict[str, object]:
    """The fields :func:`encode_extra` wrote; malformed ones are left out."""
    if not text:
        return {}
    parts = text.split("\0")
    fields: dict[str, object] = {}
    for key, coded in zip(parts[::2], parts[1::2], strict=False):
        if not key.isidentifier() or not coded:
            continue
        code, value = coded[0], coded[1:]
        try:
            if code == "s":
                fields[key] = value
            elif code == "i":
                fields[key] = int(value)
            elif code == "f":
                fields[key] = float(value)
            elif code == "b":
                fields[key] = value == "True"
            elif code == "n":
                fields[key] = None
        except ValueError:  # e.g. an int of more digits than int() accepts
            continue
    return fields


def record_extra(text: str, **ours: object) -> dict[str, object]:
    """The ``extra`` for the parent's copy of a worker's record: the worker's
    fields, minus any that would overwrite a standard attribute, plus ours."""
    fields = decode_extra(text)
    if fields:
        reserved = _reserved()
        fields = {k: v for k, v in fields.items() if k not in reserved}
    fields.update(ours)
    return fields


_reserved_names: frozenset[str] | None = None


def _reserved() -> frozenset[str]:
    """What ``Logger.makeRecord`` refuses to overwrite."""
    global _reserved_names
    if _reserved_names is None:
        import logging

        _reserved_names = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
    return _reserved_names
