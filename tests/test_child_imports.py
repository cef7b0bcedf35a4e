"""The child side imports only the standard library, and as little of it as
possible: every module it adds is paid for by every worker's start.

Checked in a fresh ``python -S`` (no site, so no .pth file imports anything
on its behalf), against an allow-list: a new import on the child side must be
added here on purpose.
"""

from __future__ import annotations

import subprocess
import sys

from support import ROOT

# _child_loop: imported by a worker with a worker_loop, which then imports
# that loop's library itself (asyncio, uvloop or trio), not before; _logextra
# and _capture: by one whose records carry extra fields, or that captures output.
CHILD_SIDE = [
    "procsup._child",
    "procsup._child_core",
    "procsup._child_io",
    "procsup._child_jobs",
    "procsup._child_loop",
    "procsup._wire",
    "procsup._forkserver_child",
    "procsup._logextra",
    "procsup._capture",
]

ALLOWED = {
    "procsup",
    *CHILD_SIDE,
    # procsup/__init__.py's lazy exports
    "importlib",
    "importlib._bootstrap",
    "importlib._bootstrap_external",
    "warnings",
    "__future__",
    # the C modules behind _child's and _forkserver_child's imports
    "_collections",
    "_queue",
    "_socket",
    "_struct",
    "struct",
    "select",
    # os itself (a -S interpreter has not imported it yet)
    "os",
    "os.path",
    "posixpath",
    "genericpath",
    "stat",
    "_stat",
    "_collections_abc",
}

# What the rule names, spelled out so that a failure says which rule it broke.
FORBIDDEN = {
    *("typing", "enum", "threading", "re", "logging", "pickle", "signal", "socket"),
    *("trio", "asyncio", "uvloop"),  # an event loop's library, only when a worker asks for it
}

# Imports nothing itself (json would bring re): one module name a line.
_PROBE = """
import sys
before = set(sys.modules)
sys.path.insert(0, sys.argv[1])
for name in sys.argv[2:]:
    __import__(name)
sys.stdout.write("\\n".join(sorted(set(sys.modules) - before)))
"""


def _imported_by(*modules: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-S", "-c", _PROBE, str(ROOT), *modules],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


def test_the_child_side_imports_only_its_allow_list() -> None:
    added = _imported_by(*CHILD_SIDE)
    assert not added & FORBIDDEN, f"the child side imports {sorted(added & FORBIDDEN)}"
    assert added <= ALLOWED, f"new imports on the child side: {sorted(added - ALLOWED)}"
