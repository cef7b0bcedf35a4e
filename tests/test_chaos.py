"""Chaos: a seeded random schedule of faults, cancellations and external
SIGKILLs over many jobs, more callers than workers; then the invariants.

* every job is resolved exactly once: its result, its own exception, a typed
  ProcsupError that fits what happened to it, or its caller's cancellation;
* the run ends within a bound computed from its settings (no hang);
* the statistics add up (busy == 0, waiting == 0, starts == start events...);
* no process, zombie, grandchild or descriptor is left (grandchildren here,
  the rest by the autouse guard in conftest.py).

The default run is short. ``nox -s chaos`` runs the long one:
``pytest tests/test_chaos.py -m slow --chaos-long [--chaos-seconds 240]
[--chaos-seed N]``. A failure prints its seed; ``--chaos-seed`` replays the
schedule (the interleaving with real processes differs from run to run).
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import faults
import psutil
import pytest
import trio
from support import is_gone, templates

import procsup

# Fault kinds a chaos job may carry, with their weights.
JOB_FAULTS = {
    "raise": 3,
    "exit": 2,
    "sigkill": 2,
    "segv": 2,
    "garbage": 2,
    "close_channel": 1,
    "grandchild": 1,
    "memory": 1,
    "hang": 1,
}
# What each fault yields to the caller (see test_crash_matrix).
FAULT_ERRORS: dict[str, type[BaseException]] = {
    "raise": faults.InjectedFault,
    "exit": procsup.WorkerCrashedError,
    "sigkill": procsup.WorkerCrashedError,
    "segv": procsup.WorkerCrashedError,
    "garbage": procsup.ProtocolError,
    "close_channel": procsup.WorkerCrashedError,
    "grandchild": procsup.WorkerCrashedError,
    "memory": procsup.MemoryLimitError,
    "hang": procsup.WorkerUnresponsiveError,
}
POOL = {
    "idle": 4,
    "max_workers": 6,
    "init_timeout": 5.0,
    "ping_interval": 0.2,
    "ping_timeout": 1.0,
    "shutdown_timeout": 1.0,
    "cancel_grace": 0.3,
    "memory_limit_mb": faults.MEMORY_LIMIT_MB,
    "memory_interval": 0.1,
    "backoff_base": 0.02,
    "backoff_cap": 0.5,
}


@dataclass(frozen=True)
class Settings:
    seed: int
    jobs: int | None = 1000  # stop after this many jobs...
    seconds: float | None = None  # ...or after this long
    callers: int = 12
    fault_rate: float = 0.05
    cancel_rate: float = 0.02
    acquire_rate: float = 0.1  # jobs run through pool.acquire() instead of pool.run()
    init_fail_rate: float = 0.03
    kill_every: float = 0.25  # mean seconds between external SIGKILLs
    max_jobs_choices: tuple[int | None, ...] = (5, 20, None)

    def bound(self) -> float:
        """Seconds the run may take before it counts as hung: generous, but
        derived from the settings (a job costs at most a worker start, a hang
        costs a ping round, a cancellation its grace)."""
        jobs = self.jobs if self.jobs is not None else 0
        per_job = 0.1 + self.fault_rate * (POOL["ping_interval"] + POOL["ping_timeout"])
        per_job += self.cancel_rate * POOL["cancel_grace"]
        return 30.0 + (self.seconds or 0.0) + jobs * per_job


@dataclass(frozen=True)
class Job:
    index: int
    kind: str | None
    seconds: float
    cancel_after: float | None
    via_acquire: bool


@dataclass
class Tally:
    """What the run did, and what came back."""

    jobs: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    kills: int = 0
    killed: set[int] = field(default_factory=set)
    live: set[int] = field(default_factory=set)
    warming: set[int] = field(default_factory=set)
    fork_server_kills: int = 0
    spawn_failures: int = 0
    lost_unused: int = 0  # warm workers that died before their first job (start_failed too)
    events: Counter[str] = field(default_factory=Counter)
    ready_pids: set[int] = field(default_factory=set)
    exited_pids: set[int] = field(default_factory=set)
    resolved: dict[int, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    max_jobs: int | None = None
    start_method: str = "exec"

    def on_event(self, event: procsup.PoolEvent) -> None:
        self.events[event.kind] += 1
        if event.pid is None:
            self.spawn_failures += event.kind == "start_failed"
            return
        if event.kind == "start":
            self.warming.add(event.pid)
            self.killed.discard(event.pid)  # a reused pid: a new worker
        elif event.kind == "start_failed":
            self.warming.discard(event.pid)
            self.lost_unused += event.pid in self.ready_pids
        elif event.kind == "ready":
            self.warming.discard(event.pid)
            self.ready_pids.add(event.pid)
            self.live.add(event.pid)
        elif event.kind == "exited":
            self.exited_pids.add(event.pid)
            self.live.discard(event.pid)

    def summary(self) -> str:
        return (
            f"{self.jobs} jobs in {self.elapsed:.1f}s ({self.start_method}, max_jobs="
            f"{self.max_jobs}); faults injected: {sum(self.faults.values())} "
            f"{dict(self.faults)}; external SIGKILLs: {self.kills} (fork server: "
            f"{self.fork_server_kills}); workers started: "
            f"{self.events['start']}, start failures: {self.events['start_failed']}; "
            f"outcomes: {dict(self.outcomes)}"
        )


def schedule(settings: Settings, rng: random.Random) -> Iterator[Job]:
    kinds, weights = zip(*JOB_FAULTS.items(), strict=True)
    for index in itertools.count():
        kind = None
        if rng.random() < settings.fault_rate:
            kind = rng.choices(kinds, weights)[0]
        cancel_after = None
        seconds = 0.0
        if rng.random() < settings.cancel_rate:
            seconds = rng.uniform(0.05, 0.3)
            cancel_after = rng.uniform(0.0, 0.3)
        yield Job(index, kind, seconds, cancel_after, rng.random() < settings.acquire_rate)


def judge(job: Job, outcome: object, tally: Tally) -> str | None:
    """Name the outcome, or return a problem if it does not fit the job."""
    if outcome == ("value", job.index):
        return None if job.kind in (None,) else f"job {job}: a {job.kind} fault returned a value"
    if outcome == ("cancelled",):
        return None if job.cancel_after is not None else f"job {job}: cancelled unasked"
    assert isinstance(outcome, BaseException)
    err = outcome
    if isinstance(err, procsup.NoWorkerAvailableError):
        return (
            None if tally.events["start_failed"] else f"job {job}: {err!r} without start failures"
        )
    if isinstance(err, procsup.WorkerError):
        if err.pid is None or f"pid={err.pid}" not in str(err):
            return f"job {job}: {err!r} does not name its worker"
        killed = err.pid in tally.killed
        if isinstance(err, procsup.WorkerCrashedError) and killed and err.returncode == -9:
            return None  # our external SIGKILL, in the job or just before it
        if err.phase != "job":
            return f"job {job}: {err!r} in phase {err.phase}"
    expected = FAULT_ERRORS.get(job.kind or "")
    if expected is not None and isinstance(err, expected):
        return None
    return f"job {job}: unexpected {err!r}"


async def run_job(pool: procsup.Pool, job: Job, workdir: Path) -> object:
    workdir_arg = ""
    if job.kind == "grandchild":
        jobdir = workdir / f"job{job.index}"
        jobdir.mkdir()
        workdir_arg = str(jobdir)
    args = (job.index, job.kind, workdir_arg, job.seconds)
    cancel_after = math.inf if job.cancel_after is None else job.cancel_after
    with trio.move_on_after(cancel_after) as scope:
        try:
            if job.via_acquire:
                async with pool.acquire() as worker:
                    return ("value", await worker.run(faults.chaos_job, *args))
            return ("value", await pool.run(faults.chaos_job, *args))
        except (procsup.ProcsupError, faults.InjectedFault) as exc:
            return exc
    assert scope.cancelled_caught
    return ("cancelled",)


async def killer(settings: Settings, rng: random.Random, tally: Tally) -> None:
    """SIGKILL a random live or warming worker now and then, as an outsider
    would; now and then the fork server itself, with all its workers."""
    while True:
        await trio.sleep(rng.expovariate(1.0 / settings.kill_every))
        if tally.start_method == "forkserver" and rng.random() < 0.05:
            _kill_fork_server(tally)
            continue
        candidates = sorted((tally.live | tally.warming) - tally.killed)
        if not candidates:
            continue
        pid = rng.choice(candidates)
        if not _is_ours(pid):
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        tally.killed.add(pid)
        tally.kills += 1


def _kill_fork_server(tally: Tally) -> None:
    for child in templates():
        try:
            workers = child.children()
            tally.killed.update(w.pid for w in workers)
            child.kill()
        except psutil.NoSuchProcess:
            continue
        tally.kills += 1
        tally.fork_server_kills += 1


def _is_ours(pid: int) -> bool:
    """Still our worker (child of ours or of our fork server), not a reused pid."""
    try:
        parent = psutil.Process(pid).ppid()
    except psutil.NoSuchProcess:
        return False
    me = os.getpid()
    if parent == me:
        return True
    try:
        return psutil.Process(parent).ppid() == me
    except psutil.NoSuchProcess:
        return False


async def chaos(settings: Settings, workdir: Path) -> Tally:
    rng = random.Random(settings.seed)
    tally = Tally()
    tally.max_jobs = rng.choice(settings.max_jobs_choices)
    tally.start_method = rng.choice(["exec", "forkserver"])
    initializer = functools.partial(
        faults.chaos_init, str(workdir), settings.seed, settings.init_fail_rate
    )
    jobs_send, jobs_recv = trio.open_memory_channel[Job](0)
    started = time.monotonic()

    async def feed() -> None:
        async with jobs_send:
            for job in schedule(settings, rng):
                if settings.jobs is not None and job.index >= settings.jobs:
                    return
                if settings.seconds is not None and time.monotonic() - started > settings.seconds:
                    return
                if job.kind is not None:
                    tally.faults[job.kind] += 1
                await jobs_send.send(job)

    async def caller(pool: procsup.Pool) -> None:
        async for job in jobs_recv:
            outcome = await run_job(pool, job, workdir)
            if job.index in tally.resolved:
                tally.problems.append(f"job {job.index} resolved twice")
            name = type(outcome).__name__ if isinstance(outcome, BaseException) else outcome[0]
            tally.resolved[job.index] = name
            tally.outcomes[name] += 1
            tally.jobs += 1
            problem = judge(job, outcome, tally)
            if problem is not None:
                tally.problems.append(problem)

    with trio.fail_after(settings.bound()):
        async with procsup.open_pool(
            initializer,
            max_jobs=tally.max_jobs,
            start_method=tally.start_method,
            on_event=tally.on_event,
            **POOL,
        ) as pool:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(killer, settings, rng, tally)
                async with trio.open_nursery() as callers:
                    callers.start_soon(feed)
                    for _ in range(settings.callers):
                        callers.start_soon(caller, pool)
                nursery.cancel_scope.cancel()
            tally.elapsed = time.monotonic() - started
            await _check_quiescent(pool, tally)
    # Every worker that got warm has been reaped and reported.
    if tally.ready_pids - tally.exited_pids:
        tally.problems.append(f"never reported exited: {tally.ready_pids - tally.exited_pids}")
    return tally


async def _check_quiescent(pool: procsup.Pool, tally: Tally) -> None:
    stats = pool.statistics()
    if (stats.busy, stats.waiting) != (0, 0):
        tally.problems.append(f"after the run: busy={stats.busy} waiting={stats.waiting}")
    with trio.fail_after(30):
        while pool.statistics().warming:
            await trio.sleep(0.01)
    stats = pool.statistics()
    if stats.starts != tally.events["start"]:
        tally.problems.append(f"starts={stats.starts} but {tally.events['start']} start events")
    # Each process started ends warm or failed; a spawn that failed (no
    # process, no pid) is a start failure without a start.
    settled = tally.events["ready"] + tally.events["start_failed"] - tally.lost_unused
    if stats.starts + tally.spawn_failures != settled:
        tally.problems.append(f"starts={stats.starts} do not settle as the events: {tally.events}")
    if stats.start_failures != tally.events["start_failed"]:
        tally.problems.append(f"start_failures={stats.start_failures}, events {tally.events}")
    if len(tally.live) != stats.idle + stats.busy + stats.closing:
        tally.problems.append(f"{len(tally.live)} live workers but statistics say {stats}")


def grandchildren_alive(workdir: Path) -> list[int]:
    alive = []
    for pidfile in workdir.glob(f"job*/{faults.GRANDCHILD_PIDFILE}"):
        pid = int(pidfile.read_text())
        if not is_gone(pid):
            alive.append(pid)
    return alive


async def check(settings: Settings, workdir: Path) -> Tally:
    print(f"chaos seed {settings.seed} (replay: --chaos-seed {settings.seed})")
    try:
        tally = await chaos(settings, workdir)
        with trio.fail_after(2):  # SIGKILLed before their parent was reaped
            while grandchildren_alive(workdir):
                await trio.sleep(0.01)
        print(tally.summary())
        assert not tally.problems, "\n".join(tally.problems[:20])
        expected = settings.jobs if settings.jobs is not None else tally.jobs
        assert len(tally.resolved) == tally.jobs == expected
    except BaseException as exc:
        exc.add_note(f"chaos seed: {settings.seed} (replay with --chaos-seed {settings.seed})")
        raise
    return tally


@pytest.fixture
def chaos_seed(request: pytest.FixtureRequest) -> int:
    seed = request.config.getoption("--chaos-seed")
    return int(seed) if seed is not None else random.SystemRandom().randrange(2**32)


async def test_chaos_short(chaos_seed: int, tmp_path: Path) -> None:
    tally = await check(Settings(seed=chaos_seed, jobs=1000), tmp_path)
    assert sum(tally.faults.values()) > 0


@pytest.fixture
def chaos_long(request: pytest.FixtureRequest) -> None:
    if not request.config.getoption("--chaos-long"):
        pytest.skip("the long chaos run needs --chaos-long (nox -s chaos)")


@pytest.mark.slow
@pytest.mark.usefixtures("chaos_long")
async def test_chaos_long(chaos_seed: int, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    seconds = request.config.getoption("--chaos-seconds") or 240.0
    settings = Settings(
        seed=chaos_seed,
        jobs=None,
        seconds=seconds,
        max_jobs_choices=(1, 2, 5, 20, None),
    )
    await check(settings, tmp_path)


# -- load: many acquirers, few workers ----------------------------------------------


async def test_many_acquirers_are_served_fairly_and_the_loop_stays_responsive() -> None:
    """200 acquirers share 8 workers for 2,000 jobs: FIFO (no waiter is overtaken
    by more than the pool size), nobody starves. The loop's lag is printed,
    not asserted: on a loaded machine it measures the machine; the benchmarks'
    load case judges it (p99 <= 50 ms, ``nox -s bench -- --only load``)."""
    size, acquirers, per_acquirer = 8, 200, 10
    tickets = itertools.count()
    served: list[int] = []  # wait tickets, in the order the waits ended
    done = Counter[int]()
    async with (
        procsup.open_pool(idle=size, max_workers=size, max_jobs=None) as pool,
        faults.loop_lag() as lag,
    ):
        await pool.wait_warm()

        async def acquirer(me: int) -> None:
            for _ in range(per_acquirer):
                ticket = next(tickets)
                async with pool.acquire() as worker:
                    served.append(ticket)
                    await worker.run(faults.take, me)
                done[me] += 1

        async with trio.open_nursery() as nursery:
            for me in range(acquirers):
                nursery.start_soon(acquirer, me)
        stats = pool.statistics()
    assert (stats.busy, stats.waiting, stats.starts) == (0, 0, size)
    assert all(done[me] == per_acquirer for me in range(acquirers))  # no starvation
    overtaken = _max_overtaken(served)
    p99 = lag.percentile(99)
    print(f"overtaken by <= {overtaken}; loop lag p99 {p99 * 1000:.1f} ms ({len(lag.samples)})")
    assert overtaken <= size, f"a waiter was overtaken by {overtaken} later ones"


def _max_overtaken(served: list[int]) -> int:
    """For each wait, how many waits that began after it ended before it."""
    worst = 0
    seen: list[int] = []  # sorted
    for ticket in served:
        worst = max(worst, len(seen) - bisect.bisect_right(seen, ticket))
        bisect.insort(seen, ticket)
    return worst


async def test_occasional_start_failures_do_not_fail_jobs_under_contention(
    tmp_path: Path,
) -> None:
    """5% of starts fail, 12 callers share 6 single-job workers: the waiters
    that lose a race for the starts that succeeded have not sat through a
    failed start round, so (almost) no job ends in NoWorkerAvailableError."""
    initializer = functools.partial(faults.chaos_init, str(tmp_path), 7, 0.05)
    outcomes = Counter[str]()
    async with procsup.open_pool(
        initializer, idle=4, max_workers=6, max_jobs=1, backoff_base=0.02, backoff_cap=0.5
    ) as pool:

        async def caller(jobs: range) -> None:
            for i in jobs:
                try:
                    assert await pool.run(faults.chaos_job, i) == i
                    outcomes["ok"] += 1
                except procsup.NoWorkerAvailableError:
                    outcomes["no worker"] += 1

        async with trio.open_nursery() as nursery:
            for c in range(12):
                nursery.start_soon(caller, range(c, 300, 12))
        failures = pool.statistics().start_failures
    assert failures > 0
    assert outcomes["ok"] + outcomes["no worker"] == 300
    assert outcomes["no worker"] <= 3, f"{outcomes} with {failures} start failures"


# -- idle kills: a job that never started is never the caller's failure ---------------------


@dataclass
class IdleKills:
    """What an idle-kill run did: workers warm and not yet given a job are
    SIGKILLed at random (and, under the fork server, now and then the
    template with them), as the OOM killer would."""

    ready: set[int] = field(default_factory=set)
    given_a_job: set[int] = field(default_factory=set)
    killed: set[int] = field(default_factory=set)
    parent_of: dict[int, int] = field(default_factory=dict)  # worker -> its fork server, if any
    killed_templates: set[int] = field(default_factory=set)
    template_kills: int = 0
    results: int = 0
    errors: list[BaseException] = field(default_factory=list)

    def on_event(self, event: procsup.PoolEvent) -> None:
        if event.kind == "ready" and event.pid is not None:
            self.ready.add(event.pid)
            try:
                self.parent_of[event.pid] = psutil.Process(event.pid).ppid()
            except psutil.NoSuchProcess:
                pass
        elif event.kind == "job_started" and event.pid is not None:
            self.given_a_job.add(event.pid)

    def idle(self) -> list[int]:
        return sorted(self.ready - self.given_a_job - self.killed)


async def _kill_idle_workers(
    pool: procsup.Pool,
    run: IdleKills,
    rng: random.Random,
    method: str,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    # One certain kill first, of a worker warmed before any job (a run with
    # no kill would test nothing); then kills at random among the jobs.
    await pool.wait_warm()
    first = next(pid for pid in run.idle() if _is_ours(pid))
    os.kill(first, signal.SIGKILL)
    run.killed.add(first)
    task_status.started()
    while True:
        await trio.sleep(rng.expovariate(1 / 0.02))
        if method == "forkserver" and rng.random() < 0.02:
            for template in templates():  # with its workers, as a cgroup's OOM kill
                try:
                    workers = [w.pid for w in template.children()]
                    for pid in [*workers, template.pid]:
                        os.kill(pid, signal.SIGKILL)
                except (psutil.NoSuchProcess, ProcessLookupError):
                    continue
                run.killed.update(workers)
                run.killed_templates.add(template.pid)
                run.template_kills += 1
            continue
        idle = [pid for pid in run.idle() if _is_ours(pid)]
        if idle:
            pid = rng.choice(idle)
            os.kill(pid, signal.SIGKILL)
            run.killed.add(pid)


async def idle_kill_chaos(method: str, jobs: int, workdir: Path, seed: int) -> IdleKills:
    import robust_jobs

    rng = random.Random(seed)
    run = IdleKills()
    indices = iter(range(jobs))

    async def caller(pool: procsup.Pool) -> None:
        for index in indices:
            try:
                await pool.run(robust_jobs.touch, str(workdir / str(index)))
            except Exception as exc:  # noqa: BLE001 -- judged below
                run.errors.append(exc)
            else:
                run.results += 1
            # A pause between jobs leaves warm workers idle for a while: the
            # killer's targets (without it, each is taken the moment it is ready).
            await trio.sleep(rng.expovariate(1 / 0.01))

    # Generous: a one-shot exec worker's start takes 0.3 s on a loaded 2-core machine.
    with trio.fail_after(60 + jobs * 0.5):
        async with (
            procsup.open_pool(
                idle=4,
                max_workers=8,
                start_method=method,
                on_event=run.on_event,
                backoff_base=0.01,
                backoff_cap=0.1,
            ) as pool,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(_kill_idle_workers, pool, run, rng, method)
            async with trio.open_nursery() as callers:
                for _ in range(8):
                    callers.start_soon(caller, pool)
            nursery.cancel_scope.cancel()
    return run


def judge_idle_kills(run: IdleKills, jobs: int, workdir: Path) -> None:
    # Every job body ran at most once ("x" mode: a second run raises
    # FileExistsError, and that would be among the errors).
    ran = {int(p.name) for p in workdir.iterdir() if p.name.isdigit()}
    # A killed fork server's workers are killed with it (by the spawner, if
    # not by us): those forked after we listed its children too.
    orphaned = {pid for pid, ppid in run.parent_of.items() if ppid in run.killed_templates}
    assert run.results + len(run.errors) == jobs
    assert len(ran) >= run.results
    for error in run.errors:
        # A caller sees an error only for a job its worker began: the kill
        # raced with the job's start (phase "job", our SIGKILL).
        assert isinstance(error, procsup.WorkerCrashedError), repr(error)
        assert error.phase == "job", repr(error)
        assert error.pid in run.killed | orphaned, repr(error)
        assert error.returncode == -signal.SIGKILL, repr(error)


@pytest.mark.parametrize("method", ["exec", "forkserver"])
async def test_idle_kills_fail_no_job_that_never_started(
    method: str, chaos_seed: int, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """SIGKILL random idle workers (and the fork server) during one-shot
    jobs: no caller sees an error for a job that never started, every job
    body runs at most once, nothing is left (the autouse guard). 150 jobs
    here; ``--chaos-long`` (nox -s chaos): 5,000."""
    jobs = 5000 if request.config.getoption("--chaos-long") else 150
    print(f"chaos seed {chaos_seed} (replay: --chaos-seed {chaos_seed})")
    run = await idle_kill_chaos(method, jobs, tmp_path, chaos_seed)
    print(
        f"{jobs} jobs ({method}): {len(run.killed)} idle workers SIGKILLed, "
        f"{run.template_kills} fork-server kills; {len(run.errors)} jobs lost to a kill "
        "that came as they began"
    )
    judge_idle_kills(run, jobs, tmp_path)
    assert run.killed
