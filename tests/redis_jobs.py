"""Jobs for the queue tests: workers import this module by name. Each job
appends one line to the execution log ``$PROCSUP_TEST_LOG`` (O_APPEND), so
a test counts executions exactly."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any


def _log(arg: Any) -> None:
    path = os.environ.get("PROCSUP_TEST_LOG")
    if path:
        host = os.environ.get("PROCSUP_TEST_HOST")
        line = json.dumps({"arg": arg, "pid": os.getpid(), "host": host}) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def executions(path: str) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


class Transient(Exception):
    """A failure worth retrying (the tests list it in ``retry_on``)."""


def _first_time(path: str | None) -> bool:
    """True the first time it is asked about ``path`` (a marker file)."""
    if not path:
        return False
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    return True


def _wait_for(gate: str, within: float = 60.0) -> None:
    """Block until the test creates ``gate``: a job that must still be running
    when the test samples the queue cannot finish early, however slow the
    machine. A file is the one thing a test can signal every worker with."""
    deadline = time.monotonic() + within
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the test never opened gate {gate}")
        time.sleep(0.01)


def work(arg: Any) -> Any:
    """{"gate": path, "sleep": s, "crash": True, "raise": "msg", "kill_host": True,
    "value": v, "crash_once": marker path, "transient_once": marker path}.
    The execution is logged first, then the job waits for its gate, if any."""
    _log(arg)
    if not isinstance(arg, dict):
        return arg
    if arg.get("gate"):
        _wait_for(arg["gate"])
    if _first_time(arg.get("crash_once")):
        os._exit(3)
    if _first_time(arg.get("transient_once")):
        raise Transient("try again")
    if arg.get("sleep"):
        time.sleep(arg["sleep"])
    if arg.get("crash"):
        os._exit(3)
    if arg.get("kill_host"):
        os.kill(_serve_process(), signal.SIGKILL)
        time.sleep(60)  # the worker goes when it sees its host gone
    if arg.get("raise"):
        raise ValueError(arg["raise"])
    return arg.get("value", arg)


def _serve_process() -> int:
    import psutil

    for parent in psutil.Process().parents():
        if "serve" in parent.cmdline():
            return parent.pid
    raise RuntimeError("not run by procsup serve")


def square(x: int) -> int:
    _log(x)
    return x * x


def fail_init() -> None:
    raise RuntimeError("this initializer always fails")
