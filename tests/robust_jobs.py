"""Jobs and initializers for tests/test_robust.py (issue 10): workers import
this module by name, so it imports nothing heavy."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def noop() -> None:
    return None


def touch(path: str) -> str:
    """Leave a side-effect file: the job body ran (once per file name)."""
    with open(path, "x") as f:  # "x": a second run of the same job fails loudly
        f.write(str(os.getpid()))
    return path


def leave_group_and_ignore_sigterm(pidfile: str) -> None:
    """Move this worker into another process group (a subprocess's) and
    ignore SIGTERM, then hang: only a SIGKILL of the worker's own pid ends it."""
    helper = subprocess.Popen(["sleep", "60"], process_group=0)
    Path(pidfile).write_text(str(helper.pid))
    os.setpgid(0, helper.pid)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)


def die_after_ready_unless(flag: str) -> str:
    """An initializer whose worker dies right after reporting ready, until
    ``flag`` exists (then it recovers)."""
    if not os.path.exists(flag):
        import threading

        threading.Timer(0.05, os._exit, (3,)).start()
    return "ok"


def fail_unless(flag: str) -> str:
    """An initializer that raises until ``flag`` exists."""
    if not os.path.exists(flag):
        raise RuntimeError("not yet")
    return "ok"
