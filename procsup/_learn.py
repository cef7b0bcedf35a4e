"""The modules of the jobs a pool has run, imported ahead of the next jobs
(``learn_modules=True``, the default), so that a one-shot job does not pay for
its module's import on its own critical path.

What is learned, on the first job of each function: the function's module
(``__mp_main__`` for one defined in the parent's ``__main__`` script, which
a worker imports as multiprocessing does), and the modules its pickled
arguments name (their classes' and functions' modules). Later jobs of the
same function cost one dictionary lookup.

Who imports them: a worker started after that, after its initializer and
before it says READY; and a fork server's template, once, so that the
workers it forks share them (see :mod:`procsup._forkserver_child`). A module
that fails to import in a worker, or that raises or takes too long in the
template, is dropped from the list, with one warning; one that misbehaves
only for a template (it starts threads, keeps descriptors open, sets signal
handlers) is left to each worker, with one warning. Either way its jobs still
work: they import what they need, as without learning.
"""

from __future__ import annotations

import functools
import logging
import pickletools
from collections.abc import Callable, Iterator
from typing import Any

from ._pickle import main_importable

__all__ = ["MAX_MODULES", "LearnedModules", "import_bound", "pickled_modules"]

MAX_MODULES = 64  # a pool of many job modules learns the first ones
_MAX_FUNCTIONS = 4096  # functions whose arguments were looked at, at most
_MAX_SCANNED = 65536  # bytes of a first job's pickle looked through, at most
_IMPORT_BOUND = 5.0  # seconds a learned module may take to import ahead of its jobs
# Modules every worker has already, and the parent's own main under its two names.
_NOT_LEARNED = frozenset({"__main__", "__mp_main__", "builtins", "copyreg", "_codecs"})
_STRINGS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"})
_NOT_PUSHES = frozenset({"PROTO", "FRAME"})
logger = logging.getLogger("procsup.pool")


class LearnedModules:
    """One pool's job modules, in the order it first ran them. Shared by
    the pool's workers (each notes the job it is sent) and its fork server."""

    __slots__ = ("_dropped", "_for_workers_only", "_names", "_seen", "version")

    def __init__(self) -> None:
        self._names: dict[str, None] = {}  # ordered: a dict, not a set
        self._dropped: set[str] = set()  # never learned again
        self._for_workers_only: set[str] = set()  # not for a fork server's template
        self._seen: set[int] = set()  # id() of the functions already noted
        self.version = 0
        """Grows with each module learned: a template compares it with the
        version it was last sent."""

    def note(self, fn: Callable[..., Any], payload: bytes | None = None) -> None:
        """A job of ``fn`` is sent, pickled as ``payload`` (None: not in
        band). Learns from the first job of each function only."""
        if id(fn) in self._seen:  # the hot path: a function seen before
            return
        if len(self._seen) < _MAX_FUNCTIONS:  # ids of dead functions may recur: harmless
            self._seen.add(id(fn))
        while isinstance(fn, functools.partial):
            fn = fn.func
        self._learn(getattr(fn, "__module__", None))
        if payload is not None and len(payload) <= _MAX_SCANNED:
            for name in pickled_modules(payload):
                self._learn(name)

    def _learn(self, name: object) -> None:
        if type(name) is not str or name in self._names:
            return
        if name == "__main__" and main_importable():
            name = "__mp_main__"  # a worker imports the main script under this name
        elif name in _NOT_LEARNED:
            return
        if name in self._dropped or len(self._names) >= MAX_MODULES:
            return
        self._names[name] = None
        self.version += 1

    def field(self, init_timeout: float) -> str:
        """For INIT: the import bound in ms, then the module names, one a line."""
        if not self._names:
            return ""
        return "\n".join((str(int(import_bound(init_timeout) * 1000)), *self._names))

    def for_template(self) -> list[str]:
        """The modules for a fork server's template to import."""
        return [name for name in self._names if name not in self._for_workers_only]

    def drop(self, failed: str, pid: int) -> None:
        """A worker could not import these (READY's list): forget them."""
        for name in filter(None, failed.split("\n")):
            if name in self._names:
                self._forget(name)
                logger.warning(
                    "worker pid=%d could not import job module %r while warming; "
                    "workers no longer import it ahead of its jobs",
                    pid,
                    name,
                )

    def refuse(self, name: str, why: str, *, everywhere: bool, pid: int) -> None:
        """A fork server's template did not import ``name``, because ``why``:
        forget it (``everywhere``), or leave it to each worker."""
        if name not in self._names or name in self._for_workers_only:
            return
        if everywhere:
            self._forget(name)
            what, then = "could not", "workers no longer import it ahead of its jobs"
        else:
            self._for_workers_only.add(name)
            what, then = "did not", "each worker imports it while warming instead"
        logger.warning(
            "fork server pid=%d %s import job module %r: %s; %s", pid, what, name, why, then
        )

    def _forget(self, name: str) -> None:
        del self._names[name]
        self._dropped.add(name)


def import_bound(init_timeout: float) -> float:
    """Seconds a learned module may take to import in a worker warming or a
    template: a module slower than that is dropped, so that it cannot make
    starts time out (a third of ``init_timeout``, at most 5 s)."""
    return min(_IMPORT_BOUND, init_timeout / 3)


def pickled_modules(data: bytes) -> Iterator[str]:
    """The modules a pickle names (its GLOBAL and STACK_GLOBAL opcodes), in
    order, possibly repeated; nothing more of a malformed pickle."""
    strings: list[Any] = []  # what the last opcodes pushed, as far as it matters here
    memo: dict[Any, Any] = {}
    try:
        for opcode, arg, _ in pickletools.genops(data):
            name = opcode.name
            if name in _NOT_PUSHES:
                continue
            if name == "GLOBAL":
                yield str(arg).partition(" ")[0]
            elif name == "STACK_GLOBAL" and len(strings) == 2 and isinstance(strings[0], str):
                yield strings[0]
            if name in _STRINGS:
                strings.append(arg)
            elif name == "MEMOIZE":
                memo[len(memo)] = strings[-1] if strings else None
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[arg] = strings[-1] if strings else None
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                strings.append(memo.get(arg))
            else:
                strings.append(None)
            del strings[:-2]
    except Exception:  # noqa: BLE001 -- a hint, not a contract: stop looking
        return
