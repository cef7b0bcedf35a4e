"""The modules of the jobs a pool has run, for its next workers to import
while they warm (``learn_modules=True``), so that a one-shot job does not pay for
its module's import on its own critical path.

A worker imports them after its initializer, before it says READY, ignoring
none silently: a module that fails to import there is reported in READY and
dropped from the list, with one warning. Modules of ``__main__`` are not
learned (a worker imports the parent's main module when a job needs it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_MODULES", "LearnedModules"]

MAX_MODULES = 64  # a pool of many job modules learns the first ones
_NOT_LEARNED = frozenset({"__main__", "__mp_main__", "builtins"})
logger = logging.getLogger("procsup.pool")


class LearnedModules:
    """One pool's job modules, in the order it first ran them. Shared by
    the pool's workers: each notes the job it is sent."""

    __slots__ = ("_dropped", "_names")

    def __init__(self) -> None:
        self._names: dict[str, None] = {}  # ordered: a dict, not a set
        self._dropped: set[str] = set()  # never learned again

    def note(self, fn: Callable[..., Any]) -> None:
        name = getattr(fn, "__module__", None)
        if type(name) is not str or name in self._names:
            return
        if name in _NOT_LEARNED or name in self._dropped or len(self._names) >= MAX_MODULES:
            return
        self._names[name] = None

    def field(self) -> str:
        """For INIT: the module names, one a line."""
        return "\n".join(self._names)

    def drop(self, failed: str, pid: int) -> None:
        """A worker could not import these (READY's list): forget them."""
        for name in filter(None, failed.split("\n")):
            if name in self._names:
                del self._names[name]
                self._dropped.add(name)
                logger.warning(
                    "worker pid=%d could not import job module %r while warming; "
                    "workers no longer import it ahead of its jobs",
                    pid,
                    name,
                )
