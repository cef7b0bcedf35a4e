"""``procsup demo``: a small workload that shows what procsup is for.

A pool warms four workers (each initializer takes 0.5 s, like loading a
model) and runs 36 jobs through them. Planted among them: a job that crashes
its process, one that hangs past its timeout, one that exceeds the memory
limit, and a model-store outage during which new workers fail to warm. Every
outcome is checked against what was planted, and so is the promise that no
process outlives the pool.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import attrs
import psutil
import trio

from ._console import Display, Tally, open_display
from ._demo_jobs import crash, hang, hog_memory, load_model, predict
from ._errors import JobTimeoutError, MemoryLimitError, WorkerCrashedError, describe_exit

__all__ = ["run_demo"]

WORKERS = 4
JOBS = 36
MAX_JOBS = 8  # jobs per worker before it is replaced
JOB_TIMEOUT = 1.5
LIMIT_MB = 100
HOG_MB = LIMIT_MB + 200
HANG_AT, CRASH_AT, HOG_AT = 5, 9, 22  # the outage starts with the crash
OUTAGE_FAILURES = 2  # failed warm-ups before the model store comes back
GUARD = 10.0  # seconds to wait for something that should happen much sooner

EXPECTED_LABELS = {
    "ok": "jobs ok",
    "crash": "failed: worker crashed",
    "timeout": f"failed: hung, stopped at {JOB_TIMEOUT:g} s timeout",
    "memory": f"failed: over memory_limit_mb={LIMIT_MB}",
}


@attrs.frozen
class _Job:
    index: int
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    expect: str  # "ok", "crash", "timeout" or "memory"


@attrs.frozen
class _Done:
    job: _Job
    outcome: str
    latency: float


def _plan() -> list[_Job]:
    jobs = []
    for i in range(JOBS):
        if i == HANG_AT:
            jobs.append(_Job(i, hang, (), "timeout"))
        elif i == CRASH_AT:
            jobs.append(_Job(i, crash, (13,), "crash"))
        elif i == HOG_AT:
            jobs.append(_Job(i, hog_memory, (HOG_MB,), "memory"))
        else:
            jobs.append(_Job(i, predict, (i, 0.1 + 0.05 * (i % 4)), "ok"))
    return jobs


class _Demo:
    def __init__(self, offline_flag: str, display: Display, tally: Tally) -> None:
        self.offline_flag = offline_flag
        self.display = display
        self.tally = tally
        self.done: list[_Done] = []
        self.pool: Any = None
        self.warm_seconds = math.nan
        self.workers_started = 0
        self.outage = trio.Event()
        self.outage_failures = 0
        self.degraded_seen = False
        self.recovered_after: float | None = None

    def say(self, text: str) -> None:
        self.display.note(text)

    async def main(self) -> None:
        from ._pool import open_pool

        start = trio.current_time()
        async with open_pool(
            functools.partial(load_model, self.offline_flag),
            idle=WORKERS,
            max_workers=WORKERS,
            max_concurrent_starts=WORKERS,  # warm-ups mostly wait (on I/O, a GPU...)
            max_jobs=MAX_JOBS,
            memory_limit_mb=LIMIT_MB,
            memory_interval=0.2,
            max_acquire_attempts=50,  # jobs wait out the outage rather than fail
            backoff_cap=1.0,
        ) as pool:
            self.pool = pool
            await pool.wait_warm()
            self.warm_seconds = trio.current_time() - start
            self.say(
                f"  {WORKERS} workers warm in {self.warm_seconds:.2f} s "
                "(they loaded their model in parallel)"
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._model_store_outage)
                send, receive = trio.open_memory_channel[_Job](0)
                async with receive:
                    for _ in range(WORKERS):
                        nursery.start_soon(self._run_jobs, receive.clone())
                async with send:
                    for job in _plan():
                        await send.send(job)
            self.workers_started = pool.statistics().starts

    async def _run_jobs(self, jobs: trio.MemoryReceiveChannel[_Job]) -> None:
        async with jobs:
            async for job in jobs:
                if job.expect == "crash":
                    self.outage.set()  # bad luck: the store goes down as a worker dies
                start = trio.current_time()
                outcome, detail = await self._run_one(job)
                self.done.append(_Done(job, outcome, trio.current_time() - start))
                self.tally.done += 1
                if outcome != "ok":
                    self.tally.failed[outcome] += 1
                    self.say(f"  job {job.index:2}: {detail}")
                self.display.advance()

    async def _run_one(self, job: _Job) -> tuple[str, str]:
        try:
            await self.pool.run(job.fn, *job.args, timeout=JOB_TIMEOUT)
        except JobTimeoutError:
            return "timeout", (
                f"hung; cancelled at its {JOB_TIMEOUT:g} s timeout, its worker stopped and reaped"
            )
        except MemoryLimitError as exc:
            return "memory", (
                f"used {exc.measured_mb:.0f} MiB ({exc.metric}), over memory_limit_mb="
                f"{LIMIT_MB}: killed -> MemoryLimitError"
            )
        except WorkerCrashedError as exc:
            return "crash", (
                f"its worker died ({describe_exit(exc.returncode)}) -> WorkerCrashedError; "
                "the pool replaces it"
            )
        except Exception as exc:  # noqa: BLE001 -- anything else is an unexpected outcome
            return "unexpected", f"UNEXPECTED {type(exc).__name__}: {exc}"
        return "ok", ""

    async def _model_store_outage(self) -> None:
        """Take the model store offline when the crash job starts, until
        warm-ups have failed a few times; then watch the pool recover."""
        await self.outage.wait()
        pool = self.pool
        async with pool.events() as events:
            await trio.Path(self.offline_flag).touch()
            self.say("  model store offline: new workers now fail to load the model")
            with trio.move_on_after(GUARD):
                async for event in events:
                    if event.kind == "start_failed":
                        self.outage_failures += 1
                        if pool.statistics().health == "degraded":
                            self.degraded_seen = True
                        if self.outage_failures >= OUTAGE_FAILURES:
                            break
            stats = pool.statistics()
            await trio.Path(self.offline_flag).unlink()
            back = trio.current_time()
            self.say(
                f"  {self.outage_failures} warm-ups failed; pool health: {stats.health} "
                f"({stats.consecutive_start_failures} failed starts in a row); "
                "the model store is back"
            )
            with trio.move_on_after(GUARD):
                async for event in events:
                    if event.kind == "ready" and pool.statistics().health == "ok":
                        self.recovered_after = trio.current_time() - back
                        break
            if self.recovered_after is not None:
                self.say(
                    f"  a worker warmed again {self.recovered_after:.2f} s later: pool health: ok"
                )


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def run_demo() -> int:
    """Run the demo; return 0 when every outcome was the expected one, else 1."""
    logging.getLogger("procsup").setLevel(logging.ERROR)  # the demo narrates instead
    mode = "live" if sys.stdout.isatty() and sys.stderr.isatty() else "plain"
    started = time.monotonic()
    tally = Tally(total=JOBS)
    with tempfile.TemporaryDirectory(prefix="procsup-demo-") as tmp:
        with open_display("procsup demo", tally, mode=mode) as display:
            display.note(
                f"procsup demo: {JOBS} jobs through a pool of {WORKERS} pre-warmed workers.\n"
                f"  Each worker loads a model at start (0.5 s) and is replaced after "
                f"{MAX_JOBS} jobs.\n"
                f"  Planted: job {HANG_AT} hangs, job {CRASH_AT} crashes its process, "
                f"job {HOG_AT} allocates {HOG_MB} MiB,\n"
                f"  and the model store goes offline when job {CRASH_AT} starts."
            )
            demo = _Demo(os.path.join(tmp, "model-store-offline"), display, tally)
            trio.run(demo.main)
        leftovers = psutil.Process().children(recursive=True)
    wall = time.monotonic() - started
    return _summarize(demo, leftovers, wall)


def _summarize(demo: _Demo, leftovers: list[psutil.Process], wall: float) -> int:
    rows: list[tuple[str, str, bool]] = []  # (what, seen, as expected)
    for kind, label in EXPECTED_LABELS.items():
        expected = sum(1 for d in demo.done if d.job.expect == kind)
        seen = sum(1 for d in demo.done if d.outcome == kind)
        as_expected = all(d.outcome == kind for d in demo.done if d.job.expect == kind)
        rows.append((label, f"{seen} (expected {expected})", as_expected and seen == expected))
    unexpected = [d for d in demo.done if d.outcome != d.job.expect]
    if len(demo.done) != JOBS or unexpected:
        rows.append(("jobs with another outcome", str(len(unexpected)), not unexpected))
    recovered = demo.recovered_after is not None
    outage = (
        f"{demo.outage_failures} failed; degraded, then ok after {demo.recovered_after:.2f} s"
        if recovered
        else f"{demo.outage_failures} failed; the pool did not recover"
    )
    rows.append(("warm-ups failed during the outage", outage, demo.degraded_seen and recovered))
    latencies = [d.latency for d in demo.done if d.outcome == "ok"]
    rows.append(
        (
            "latency p50 / p99 (ok jobs)",
            f"{_percentile(latencies, 0.5):.2f} s / {_percentile(latencies, 0.99):.2f} s",
            True,
        )
    )
    rows.append(("workers started", f"{demo.workers_started} (incl. failed warm-ups)", True))
    if leftovers:
        left = ", ".join(str(p.pid) for p in leftovers)
        rows.append(("no process left behind", f"NO: children still here: {left}", False))
    else:
        rows.append(("no process left behind", "yes (psutil: no child process remains)", True))
    rows.append(("wall time", f"{wall:.1f} s", True))

    width = max(len(what) for what, _, _ in rows)
    print("\nsummary")
    for what, value, fine in rows:
        print(f"  {what:<{width}}  {value}{'' if fine else '   <-- UNEXPECTED'}")
    all_fine = all(fine for _, _, fine in rows)
    if all_fine:
        print("every outcome was the expected one")
        return 0
    print("some outcomes were NOT the expected ones (marked above)")
    return 1
