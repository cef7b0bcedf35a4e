"""What a worker process is told about itself at its start, parent side.

The INIT frame carries, beside the initializer, the worker's *start-up*
fields (see :func:`startup_fields`): its slot in the pool, the title it shows
in ``ps`` and ``top``, the environment variables to set before the
initializer runs, the parent's per-logger levels, and whether to capture its
stdout and stderr. The child's side is the start-up section of
:mod:`procsup._child`.

Everything here runs once per worker start and is cheap when the options are
unused: the environment is compared with the fork-server template's as two
``bytes`` dicts (one C-level comparison), and only a difference is sent.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from ._errors import WorkerStartError

__all__ = ["EnvOption", "check_env", "default_name", "environ_snapshot", "startup_fields"]

EnvOption = Mapping[str, str | None] | Callable[[int], Mapping[str, str | None]] | None


def check_env(instance: object, attribute: Any, value: object) -> None:
    """attrs validator for ``env``: a mapping of variable names to strings
    (``None`` removes the variable), or a callable taking the worker's slot
    and returning one. A mapping is checked now; a callable's result at each
    worker start."""
    if value is None or callable(value):
        return
    _check_env_mapping(value, "env")


def _check_env_mapping(value: object, what: str) -> Mapping[str, str | None]:
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{what} must be a mapping of variable names to strings (or a callable "
            f"of the worker's slot returning one), got {type(value).__name__}"
        )
    for key, val in value.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise ValueError(f"{what}: {key!r} is not an environment variable name")
        if val is not None and (not isinstance(val, str) or "\0" in val):
            raise TypeError(
                f"{what}[{key!r}] must be a string without NUL, or None to remove the "
                f"variable, got {val!r}"
            )
    return value


def default_name(initializer: object) -> str:
    """The name workers show when none is given: the initializer's qualified
    name (the part after ``:`` of a ``"module:function"`` string), else ``""``."""
    if initializer is None:
        return ""
    if isinstance(initializer, str):
        return initializer.rpartition(":")[2]
    target = getattr(initializer, "func", initializer)  # a functools.partial
    return str(getattr(target, "__qualname__", type(target).__qualname__))


def process_names(name: str, slot: int) -> tuple[str, str]:
    """What ``ps`` shows after the interpreter's path, and what ``top`` shows
    (the kernel keeps 15 bytes of that)."""
    title = f"procsup worker {name} slot={slot}" if name else f"procsup worker slot={slot}"
    return title, f"procsup/{slot} {name}".rstrip()


def environ_snapshot() -> dict[bytes, bytes]:
    """This process's environment as it is now, as bytes (cheap to compare)."""
    return dict(_environ_bytes())


def _environ_bytes() -> Mapping[bytes, bytes]:
    # os.environ keeps bytes on POSIX: comparing those is one C-level call,
    # where decoding every variable (dict(os.environ)) costs tens of us.
    data = getattr(os.environ, "_data", None)
    return data if isinstance(data, dict) else os.environb


def startup_fields(
    *,
    name: str,
    slot: int,
    env: EnvOption,
    capture_output: bool,
    environ_base: dict[bytes, bytes] | None,
) -> tuple[int, str, str, bytes, str, int]:
    """The INIT frame's start-up fields: slot, process title and name,
    environment updates, logger levels, capture flag.

    ``environ_base`` is the environment the new process starts with when it
    is not this process's current one (a fork-server template's, taken when
    the template started); the difference is sent so that every worker sees
    the parent's environment as of its own start.

    Raises:
        WorkerStartError: the ``env`` callable raised or returned a bad value.
    """
    updates: dict[bytes, bytes | None] = {}
    if environ_base is not None:
        updates.update(_environ_changes(environ_base))
    if env is not None:
        updates.update(_user_env(env, slot))
    return (slot, *process_names(name, slot), _encode_env(updates), logger_levels(), capture_output)


def _environ_changes(base: dict[bytes, bytes]) -> dict[bytes, bytes | None]:
    current = _environ_bytes()
    if current == base:  # the common case: one C-level comparison
        return {}
    changes: dict[bytes, bytes | None] = {k: v for k, v in current.items() if base.get(k) != v}
    changes.update({k: None for k in base if k not in current})
    return changes


def _user_env(env: EnvOption, slot: int) -> dict[bytes, bytes | None]:
    mapping = env
    if callable(env):
        try:
            mapping = env(slot)
            mapping = _check_env_mapping(mapping, f"env({slot})")
        except Exception as exc:
            raise WorkerStartError(
                f"the env callable failed for slot {slot}: {exc!r}", pid=None, phase="init"
            ) from exc
    assert isinstance(mapping, Mapping)
    return {
        os.fsencode(key): None if value is None else os.fsencode(value)
        for key, value in mapping.items()
    }


def _encode_env(updates: dict[bytes, bytes | None]) -> bytes:
    """``KEY=VALUE`` to set, ``KEY`` to remove, NUL-separated (as environ)."""
    return b"\0".join(k if v is None else k + b"=" + v for k, v in updates.items())


def logger_levels() -> str:
    """The levels set on named loggers here, ``name=level`` NUL-separated,
    for the worker to set on its own loggers of those names."""
    found = []
    for name, logger in logging.Logger.manager.loggerDict.items():
        level = getattr(logger, "level", logging.NOTSET)  # a PlaceHolder has none
        if level != logging.NOTSET and "\0" not in name:
            found.append(f"{name}={level}")
    return "\0".join(found)
