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


def fail_unless(flag: str) -> str:
    """An initializer that raises until ``flag`` exists."""
    if not os.path.exists(flag):
        raise RuntimeError("not yet")
    return "ok"


def touch_after(path: str, value: object) -> str:
    """Leave a side-effect file once ``value`` (maybe slow to unpickle) is here."""
    return touch(path)


def _slowly(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


class SlowToUnpickle:
    """An argument whose unpickling takes ``seconds`` (user code before the job)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __reduce__(self) -> tuple[object, tuple[float]]:
        return _slowly, (self.seconds,)


def die_right_after_ready_unless(flag: str) -> str:
    """An initializer whose worker exits the moment its READY is out (before
    it can take a job), until ``flag`` exists."""
    if not os.path.exists(flag):
        from procsup import _child

        send = _child._Channel.send

        def send_then_die(self: object, frame: bytes) -> None:
            send(self, frame)  # type: ignore[arg-type]
            os._exit(3)

        _child._Channel.send = send_then_die  # type: ignore[method-assign]
    return "ok"
