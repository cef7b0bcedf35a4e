"""What the tests need to look at processes: the children of this process,
whether one is gone, which one is a fork-server template, and a parent script
to run in a process of its own.

Not to be confused with ``helpers``, the jobs and initializers that workers
import (this module imports psutil; they must not pay for it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil
import trio

HERE = Path(__file__).parent
ROOT = HERE.parent
TEMPLATE_MARK = "_forkserver_child"  # in every fork-server template's command line


def children() -> set[int]:
    """Every process below this one (zombies included)."""
    return {p.pid for p in psutil.Process().children(recursive=True)}


def describe_children() -> dict[int, str]:
    """Every process below this one, with its status and command line."""
    found = {}
    for child in psutil.Process().children(recursive=True):
        try:
            found[child.pid] = f"{child.status()} {' '.join(child.cmdline())[:120]}"
        except psutil.Error:
            continue
    return found


def is_template(proc: psutil.Process | int) -> bool:
    """True for a fork-server template of ours: a direct child that runs
    ``procsup._forkserver_child`` (the workers it forks are its children).

    Raises:
        psutil.NoSuchProcess: the process is gone.
    """
    if isinstance(proc, int):
        proc = psutil.Process(proc)
    return proc.ppid() == os.getpid() and TEMPLATE_MARK in " ".join(proc.cmdline())


def templates() -> list[psutil.Process]:
    """The fork-server templates this process runs now."""
    found = []
    for child in psutil.Process().children():
        try:
            if is_template(child):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def worker_pids() -> set[int]:
    """Live procsup workers below this process (fork-server templates excluded)."""
    pids = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE or is_template(child):
                continue
        except psutil.Error:
            continue
        pids.add(child.pid)
    return pids


def is_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie has ended too)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def alive(pids: Iterable[int]) -> list[str]:
    """Those of ``pids`` still running, each with its command line."""
    found = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                found.append(f"{pid} {' '.join(proc.cmdline())[:80]}")
        except psutil.NoSuchProcess:
            pass
    return found


def wait_gone(pids: Iterable[int], seconds: float) -> list[str]:
    """Block until every one of ``pids`` is gone, at most ``seconds``; return
    those still running then (see :func:`alive`). For tests outside trio."""
    pids = list(pids)
    deadline = time.monotonic() + seconds
    while (left := alive(pids)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


async def until_gone(pid: int, seconds: float = 5.0) -> None:
    """Wait until ``pid`` is gone; trio.TooSlowError after ``seconds``."""
    await until(lambda: is_gone(pid), seconds, interval=0.02)


async def until(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.01
) -> None:
    """Wait for a state the test can only observe, not be told about;
    trio.TooSlowError after ``timeout``."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(interval)


def child_env(**extra: str) -> dict[str, str]:
    """This environment, with ``tests/`` and the repository importable."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]), **extra}


def start_parent(
    script: str, *args: str, env: dict[str, str] | None = None, **popen: Any
) -> subprocess.Popen[str]:
    """Run ``python -c script *args`` as a parent of its own: text stdout on a
    pipe, ``tests/`` and the repository importable, and a session of its own
    so that signals meant for it reach it alone, not the test run."""
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("start_new_session", True)
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], text=True, env=env or child_env(), **popen
    )
