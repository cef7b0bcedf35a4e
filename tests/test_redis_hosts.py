"""`procsup serve` hosts as real processes against a real redis-server:
backpressure, a host killed mid-job, lease renewal, poison, drain, a Redis
restart. Each job appends to an execution log, so executions are counted
exactly; every test ends with no process of any host left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis_jobs
import trio
from redis_helpers import scrape

from procsup.redis import Queue, RemoteJobError, open_queue

HERE = Path(__file__).parent
LEASE = 1.5  # seconds: short, so that the failure tests stay quick


class Hosts:
    """`procsup serve` processes, each in its own session; all killed and
    reaped (with every process below them) at the end."""

    def __init__(self, url: str, tmp: Path, log: str) -> None:
        self.url = url
        self.tmp = tmp
        self.log = log
        self.procs: list[subprocess.Popen[bytes]] = []

    async def start(
        self, *extra: str, func: str = "redis_jobs:work", wait: bool = True, lease: float = LEASE
    ) -> subprocess.Popen[bytes]:
        n = len(self.procs)
        env = dict(
            os.environ, PYTHONPATH=str(HERE), PROCSUP_TEST_LOG=self.log, PROCSUP_TEST_HOST=str(n)
        )
        err = open(self.tmp / f"host{n}.err", "wb")  # noqa: SIM115, ASYNC230
        cmd = [
            sys.executable,
            "-m",
            "procsup",
            "serve",
            func,
            "--redis",
            self.url,
            "--queue",
            "q",
            "--lease",
            str(lease),
            "--concurrency",
            "2",
            *extra,
        ]
        with err:
            proc = subprocess.Popen(  # noqa: ASYNC220 -- reaped in close(), sync on purpose
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
                start_new_session=True,
            )
        self.procs.append(proc)
        if wait:
            with trio.fail_after(30):
                while "consuming queue" not in self.stderr(n):
                    assert proc.poll() is None, self.stderr(n)
                    await trio.sleep(0.05)
        return proc

    def consumer(self, n: int) -> str:
        return self.stderr(n).split(" as ", 1)[1].split(" ", 1)[0]

    def stderr(self, n: int) -> str:
        return (self.tmp / f"host{n}.err").read_text(errors="replace")

    def tree(self, proc: subprocess.Popen[bytes]) -> list[int]:
        try:
            return [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self, proc: subprocess.Popen[bytes]) -> list[int]:
        """SIGKILL the host process alone (its workers must go by themselves)."""
        pids = self.tree(proc)
        proc.kill()
        proc.wait(10)
        return pids

    def close(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait(10)


@pytest.fixture
def exec_log(tmp_path: Path) -> str:
    return str(tmp_path / "executions.log")


@asynccontextmanager
async def hosts_for(redis_server: Any, tmp_path: Path, exec_log: str) -> AsyncIterator[Hosts]:
    hosts = Hosts(redis_server.url, tmp_path, exec_log)
    try:
        yield hosts
    finally:
        hosts.close()


@asynccontextmanager
async def hosts_and_queue(
    redis_server: Any, tmp_path: Path, exec_log: str
) -> AsyncIterator[tuple[Hosts, Queue]]:
    """A test's hosts (see :class:`Hosts`) and its queue, ``q``, closed first."""
    async with (
        hosts_for(redis_server, tmp_path, exec_log) as hosts,
        open_queue(redis_server.url, "q") as q,
    ):
        yield hosts, q


def queue_command(redis_server: Any, command: str, *args: str) -> list[str]:
    """``procsup COMMAND --redis URL --queue q ARGS``: submit, queue, ..."""
    return [
        sys.executable,
        "-m",
        "procsup",
        command,
        "--redis",
        redis_server.url,
        "--queue",
        "q",
        *args,
    ]


async def gone(pids: list[int], within: float = 10.0) -> bool:
    with trio.move_on_after(within):
        while any(
            psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
            for p in pids
            if _exists(p)
        ):
            await trio.sleep(0.05)
        return True
    return False


def _exists(pid: int) -> bool:
    try:
        psutil.Process(pid)
    except psutil.NoSuchProcess:
        return False
    return True


async def started(exec_log: str, n: int) -> None:
    """Wait until ``n`` executions have begun (each logs itself first)."""
    with trio.fail_after(20):
        while len(redis_jobs.executions(exec_log)) < n:
            await trio.sleep(0.02)


def pending_by_consumer(redis_server: Any) -> dict[str, int]:
    out = redis_server.cli("--json", "XPENDING", "procsup:{q}:s", "procsup")
    summary = json.loads(out)
    return {name: int(count) for name, count in (summary[3] or [])}


async def result_record(q: Any, job: str, timeout: float) -> dict[str, Any]:
    try:
        return {"result": await q.result(job, timeout=timeout)}
    except RemoteJobError as exc:
        return {"error": exc}


async def test_serve_and_submit_round_trip(
    redis_server: Any, tmp_path: Path, exec_log: str
) -> None:
    async with hosts_for(redis_server, tmp_path, exec_log) as hosts:
        await hosts.start(func="redis_jobs:square")
        inputs = "".join(f"{i}\n" for i in range(5)) + "\n"
        out = await trio.run_process(
            queue_command(redis_server, "submit", "--wait", "--timeout", "30"),
            stdin=inputs.encode(),
            capture_stdout=True,
        )
        records = [json.loads(line) for line in out.stdout.decode().splitlines()]
        assert [(r["index"], r["result"]) for r in records] == [(i, i * i) for i in range(5)]
        status = await trio.run_process(
            queue_command(redis_server, "queue", "status", "--json"),
            capture_stdout=True,
        )
        report = json.loads(status.stdout)
        assert (report["backlog"], report["pending"], report["dead"]) == (0, 0, 0)
        assert len(report["hosts"]) == 1
        big = await trio.run_process(
            [
                *(sys.executable, "-m", "procsup", "submit", "--redis", redis_server.url),
                *("--queue", "q", "--max-body-bytes", "10"),
            ],
            stdin=b'"short"\n"far longer than ten bytes"\n',
            capture_stdout=True,
            check=False,
        )
        records = [json.loads(line) for line in big.stdout.decode().splitlines()]
        assert big.returncode == 1
        assert [r["id"] is None for r in records] == [False, True]
        assert records[1]["error"]["type"] == "BodyTooLargeError"
        assert records[1]["error"]["phase"] == "input"


async def test_host_holds_no_more_than_its_workers(
    redis_server: Any, tmp_path: Path, exec_log: str
) -> None:
    async with hosts_and_queue(redis_server, tmp_path, exec_log) as (hosts, q):
        jobs = [await q.submit({"sleep": 0.3, "value": i}) for i in range(10)]
        await hosts.start("--idle", "2")
        most = 0
        with trio.fail_after(60):
            while (await q.statistics()).length:
                most = max(most, *pending_by_consumer(redis_server).values(), 0)
                await trio.sleep(0.02)
        assert [await q.result(j, timeout=10) for j in jobs] == list(range(10))
    assert 1 <= most <= 2


async def test_reclaiming_host_holds_no_more_than_its_workers(
    redis_server: Any, tmp_path: Path, exec_log: str
) -> None:
    # B waits in a blocking read with both slots free when it takes A's two
    # jobs back; jobs submitted then must not come in on top (B would hold 4)
    async with hosts_and_queue(redis_server, tmp_path, exec_log) as (hosts, q):
        gate = tmp_path / "gate"
        a = await hosts.start()
        held = [await q.submit({"gate": str(gate), "value": i}) for i in range(2)]
        await started(exec_log, 2)
        await hosts.start()  # B
        b = hosts.consumer(1)
        hosts.kill(a)
        with trio.fail_after(LEASE * 1.5 + 20):
            while pending_by_consumer(redis_server).get(b, 0) < 2:
                await trio.sleep(0.01)
        more = [await q.submit({"value": i}) for i in range(2, 4)]
        most = 0
        with trio.move_on_after(3 * LEASE):  # past B's next read and reclaim pass
            while True:
                most = max(most, pending_by_consumer(redis_server).get(b, 0))
                await trio.sleep(0.01)
        gate.touch()
        assert [await q.result(j, timeout=20) for j in held + more] == [0, 1, 2, 3]
    assert most == 2


async def test_host_killed_mid_job_is_redelivered(
    redis_server: Any, tmp_path: Path, exec_log: str
) -> None:
    async with hosts_and_queue(redis_server, tmp_path, exec_log) as (hosts, q):
        a = await hosts.start()
        gate = tmp_path / "gate"  # shut: A's run cannot finish, however slow B's start
        job = await q.submit({"gate": str(gate), "sleep": 3.0, "value": "done"})
        await started(exec_log, 1)
        await hosts.start()  # B, after A has the job
        assert pending_by_consumer(redis_server) == {hosts.consumer(0): 1}  # A runs it still
        killed_at = trio.current_time()
        dead = hosts.kill(a)
        gate.touch()  # B's run goes through
        record = await result_record(q, job, timeout=LEASE * 1.5 + 15)
        took = trio.current_time() - killed_at
        assert record == {"result": "done"}
        assert took < LEASE * 1.5 + 3.0 + 3.0  # lease x 1.5, the job's 3 s, slack
        assert [e["host"] for e in redis_jobs.executions(exec_log)] == ["0", "1"]
        assert await gone(dead)
        assert len(redis_jobs.executions(exec_log)) == 2
        stats = await q.statistics()
        assert (stats.length, stats.pending, stats.dead) == (0, 0, 0)
        assert (stats.leases_lost, stats.redeliveries) == (1, 1)


async def test_long_job_renews_its_lease(redis_server: Any, tmp_path: Path, exec_log: str) -> None:
    async with hosts_and_queue(redis_server, tmp_path, exec_log) as (hosts, q):
        await hosts.start()
        await hosts.start()
        job = await q.submit({"sleep": LEASE * 3, "value": "long"})
        assert await q.result(job, timeout=30) == "long"
    assert len(redis_jobs.executions(exec_log)) == 1


async def test_poison_is_dead_lettered_and_requeued(
    redis_server: Any, tmp_path: Path, exec_log: str
) -> None:
    async with hosts_and_queue(redis_server, tmp_path, exec_log) as (hosts, q):
        await hosts.start("--max-deliveries", "3")
        poison = await q.submit({"crash": True})
        fine = await q.submit({"value": "fine"})
        record = await result_record(q, poison, timeout=30)
        assert await q.result(fine, timeout=30) == "fine"
        err = record["error"]
        assert (err.type, err.deliveries, err.exit_code) == ("WorkerCrashedError", 3, 3)
        assert len(redis_jobs.executions(exec_log)) == 4
        assert (await q.statistics()).dead == 1
        cli = queue_command(redis_server, "queue", "dead")
        listed = await trio.run_process([*cli, "list"], capture_stdout=True)
        letter = json.loads(listed.stdout.decode().splitlines()[0])
        assert (letter["id"], letter["reason"], letter["deliveries"]) == (
            poison,
            "worker_crashed",
            "3",
        )
        await trio.run_process([*cli, "requeue", poison], capture_stdout=True)
        record = await result_record(q, poison, timeout=30)
        assert record["error"].deliveries == 3  # a fresh count: three more runs
        assert len(redis_jobs.executions(exec_log)) == 7


async def test_sigterm_drains_and_hands_back(
    redis_server: Any, tmp_path: Path, exec_log: str
) -> None:
    async with hosts_and_queue(redis_server, tmp_path, exec_log) as (hosts, q):
        a = await hosts.start("--drain-timeout", "0.5", lease=30)
        gate = tmp_path / "gate"  # shut: the slow job is still running when the drain ends
        quick = await q.submit({"sleep": 0.2, "value": "quick"})
        slow = await q.submit({"gate": str(gate), "sleep": 0.5, "value": "slow"})
        await started(exec_log, 2)
        assert await q.result(quick, timeout=20) == "quick"  # finished before the drain
        pids = hosts.tree(a)
        a.send_signal(signal.SIGTERM)
        code = await trio.to_thread.run_sync(a.wait, 20)
        assert code == 143, hosts.stderr(0)
        assert await gone(pids)
        stats = await q.statistics()
        assert (stats.length, stats.pending) == (1, 0)  # the slow job, back in the queue
        gate.touch()
        restarted = trio.current_time()
        await hosts.start(lease=30)
        assert await q.result(slow, timeout=20) == "slow"
        assert trio.current_time() - restarted < 15  # well before its 30 s lease
        slow_runs = [e for e in redis_jobs.executions(exec_log) if e["arg"]["value"] == "slow"]
        assert len(slow_runs) == 2
        record = json.loads(redis_server.cli("GET", f"procsup:{{q}}:r:{slow}"))
        assert record["deliveries"] == 1  # handed back uncounted


async def test_redis_restart_loses_nothing_and_runs_nothing_twice(
    redis_server: Any, tmp_path: Path, exec_log: str
) -> None:
    async with hosts_and_queue(redis_server, tmp_path, exec_log) as (hosts, q):
        procs = [await hosts.start("--concurrency", "10", "--idle", "10") for _ in range(2)]
        jobs = [await q.submit({"sleep": LEASE * 2 + 2, "value": i}) for i in range(20)]
        with trio.fail_after(30):
            while len(redis_jobs.executions(exec_log)) < 20:
                await trio.sleep(0.02)
        cpu_before = [sum(psutil.Process(p.pid).cpu_times()[:2]) for p in procs]
        redis_server.kill()
        await trio.sleep(LEASE * 2)
        redis_server.start()
        results = [await q.result(j, timeout=30) for j in jobs]
        assert results == list(range(20))
        assert all(p.poll() is None for p in procs)  # no host crashed
        cpu = [
            sum(psutil.Process(p.pid).cpu_times()[:2]) - b
            for p, b in zip(procs, cpu_before, strict=True)
        ]
        assert max(cpu) < 2.0  # no host spun while the server was away
        assert len(redis_jobs.executions(exec_log)) == 20  # nothing ran twice
        await trio.sleep(LEASE)  # a reclaim pass after the grace finds nothing to take
        stats = await q.statistics()
        assert (stats.length, stats.pending, stats.dead) == (0, 0, 0)
        assert len(redis_jobs.executions(exec_log)) == 20


async def test_hosts_share_work_by_capacity(
    redis_server: Any, tmp_path: Path, exec_log: str
) -> None:
    async with hosts_and_queue(redis_server, tmp_path, exec_log) as (hosts, q):
        await hosts.start("--concurrency", "1")
        await hosts.start("--concurrency", "3")
        jobs = [await q.submit({"sleep": 0.2, "value": i}) for i in range(40)]
        assert [await q.result(j, timeout=60) for j in jobs] == list(range(40))
    by_host = Counter(e["host"] for e in redis_jobs.executions(exec_log))
    assert sum(by_host.values()) == 40
    assert 4 <= by_host["0"] <= 16, by_host  # about 1:3 (10 of 40)


async def test_host_that_cannot_start_workers_takes_nothing(
    redis_server: Any, tmp_path: Path, exec_log: str
) -> None:
    async with hosts_and_queue(redis_server, tmp_path, exec_log) as (hosts, q):
        jobs = [await q.submit({"value": i}) for i in range(10)]
        broken = await hosts.start("--init", "redis_jobs:fail_init", wait=False)
        await hosts.start()
        assert [await q.result(j, timeout=60) for j in jobs] == list(range(10))
        assert await trio.to_thread.run_sync(broken.wait, 30) == 1
        assert "no worker could start" in hosts.stderr(0)
    assert {e["host"] for e in redis_jobs.executions(exec_log)} == {"1"}


async def test_paused_host_loses_its_job_and_its_late_result_is_dropped(
    redis_server: Any, tmp_path: Path, exec_log: str
) -> None:
    async with hosts_and_queue(redis_server, tmp_path, exec_log) as (hosts, q):
        a = await hosts.start()
        gate = tmp_path / "gate"  # shut: A's run cannot finish, however slow B's start
        job = await q.submit({"gate": str(gate), "sleep": LEASE * 2, "value": "once"})
        await started(exec_log, 1)
        await hosts.start()
        assert pending_by_consumer(redis_server) == {hosts.consumer(0): 1}  # A runs it still
        gate.touch()
        os.kill(a.pid, signal.SIGSTOP)  # the host only: its worker finishes the job
        try:
            await trio.sleep(LEASE * 2.5)
            await started(exec_log, 2)  # A stays stopped until B has taken the job over
        finally:
            os.kill(a.pid, signal.SIGCONT)
        assert await q.result(job, timeout=20) == "once"
        with trio.fail_after(10):  # A learns it on its next renewal or completion
            while not ("lease lost" in hosts.stderr(0) or "outcome is dropped" in hosts.stderr(0)):
                await trio.sleep(0.05)
        assert [e["host"] for e in redis_jobs.executions(exec_log)] == ["0", "1"]
        record = json.loads(redis_server.cli("GET", f"procsup:{{q}}:r:{job}"))
        assert (record["host"], record["deliveries"]) == (hosts.consumer(1), 2)


async def test_job_that_kills_its_host_kills_at_most_max_deliveries_hosts(
    redis_server: Any, tmp_path: Path, exec_log: str
) -> None:
    async with hosts_and_queue(redis_server, tmp_path, exec_log) as (hosts, q):
        procs = [await hosts.start("--max-deliveries", "2") for _ in range(3)]
        job = await q.submit({"kill_host": True})
        record = await result_record(q, job, timeout=LEASE * 4 + 20)
        err = record["error"]
        assert (err.type, err.deliveries) == ("LeaseExpiredError", 2)
        assert len(redis_jobs.executions(exec_log)) == 2  # the third host did not run it
        assert sorted(p.poll() is None for p in procs) == [False, False, True]
        assert (await q.statistics()).dead == 1


async def test_serve_metrics_show_the_pool_the_host_and_the_queue(
    redis_server: Any, tmp_path: Path, exec_log: str
) -> None:
    async with hosts_for(redis_server, tmp_path, exec_log) as hosts:
        await hosts.start(
            "--metrics", "127.0.0.1:0", "--metrics-interval", "0.2", func="redis_jobs:square"
        )
        url = metrics_url(hosts.stderr(0))
        async with open_queue(redis_server.url, "q") as queue:
            assert [await queue.call(i, timeout=20) for i in range(3)] == [0, 1, 4]
        with trio.fail_after(20):
            while (samples := await trio.to_thread.run_sync(scrape, url)).get(
                ("procsup_queue_capacity", (("queue", "q"),))
            ) != 2:
                await trio.sleep(0.1)
    assert samples[("procsup_jobs_total", (("outcome", "ok"), ("pool", "serve")))] == 3
    completed = [v for (name, _), v in samples.items() if name == "procsup_serve_completed_total"]
    assert completed == [3]
    assert [v for (name, _), v in samples.items() if name == "procsup_serve_capacity"] == [2]
    assert samples[("procsup_queue_backlog", (("queue", "q"),))] == 0
    runs = [v for (name, _), v in samples.items() if name == "procsup_serve_run_seconds_count"]
    assert runs == [3]


async def test_queue_status_serves_the_queue_metrics_until_stopped(
    redis_server: Any, tmp_path: Path
) -> None:
    err = open(tmp_path / "status.err", "wb")  # noqa: SIM115, ASYNC230
    with err:
        proc = subprocess.Popen(  # noqa: ASYNC220 -- waited for below
            queue_command(
                redis_server,
                "queue",
                "status",
                "--metrics",
                "127.0.0.1:0",
                "--metrics-interval",
                "0.1",
            ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=dict(os.environ, PYTHONPATH=str(HERE)),
            start_new_session=True,
        )
    try:
        with trio.fail_after(30):
            while "metrics at" not in (text := (tmp_path / "status.err").read_text()):
                assert proc.poll() is None, text
                await trio.sleep(0.05)
        url = metrics_url(text)
        async with open_queue(redis_server.url, "q") as queue:
            for i in range(4):
                await queue.submit(i)
            backlog = ("procsup_queue_backlog", (("queue", "q"),))
            with trio.fail_after(20):
                while (await trio.to_thread.run_sync(scrape, url)).get(backlog) != 4:
                    await trio.sleep(0.05)
        proc.terminate()
        assert await trio.to_thread.run_sync(proc.wait, 20) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def metrics_url(stderr: str) -> str:
    """The address a command printed for ``--metrics``."""
    shown = [line for line in stderr.splitlines() if "metrics at" in line]
    return shown[0].split(" at ")[1].strip()
