"""Issue 10: nothing a job does takes down the pool, a job that never started
is never the caller's failure, and every wait stays bounded. Real processes,
under both start methods."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import robust_jobs as jobs
import trio
from support import is_gone

import procsup


# -- item 7: a worker that leaves its process group ------------------------------


async def test_a_worker_that_leaves_its_group_and_ignores_sigterm_is_killed(
    start_method: str, tmp_path: Path
) -> None:
    pidfile = tmp_path / "helper.pid"
    began = time.monotonic()
    try:
        async with procsup.open_pool(
            idle=1, start_method=start_method, cancel_grace=0.3, shutdown_timeout=0.5
        ) as pool:
            async with pool.acquire() as worker:
                pid = worker.pid
                with trio.move_on_after(1.0):
                    await worker.run(jobs.leave_group_and_ignore_sigterm, str(pidfile))
                cancelled = time.monotonic() - began
        assert is_gone(pid)
        assert cancelled < 1.0 + 0.3 + 2.0, f"the cancel took {cancelled:.1f}s"
    finally:
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
                os.waitpid(int(pidfile.read_text()), os.WNOHANG)
            except OSError:
                pass
