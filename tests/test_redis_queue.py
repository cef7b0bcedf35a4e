"""procsup.redis against a real redis-server: the round trip and the entry
schema (in-process hosts; tests/test_redis_hosts.py runs `procsup serve`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import coredis.exceptions
import pytest
import redis_jobs
import trio

import procsup
from procsup.redis import (
    BodyTooLargeError,
    QueueFullError,
    RemoteJobError,
    metric_samples,
    open_queue,
    open_server,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def exec_log(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    path = str(tmp_path / "executions.log")
    monkeypatch.setenv("PROCSUP_TEST_LOG", path)
    return path


@asynccontextmanager
async def host(
    url: str, fn: Any = redis_jobs.work, workers: int = 2, **options: Any
) -> AsyncIterator[Any]:
    async with procsup.open_pool(idle=workers, max_workers=workers) as pool:
        options.setdefault("lease", 2.0)
        async with open_server(pool, fn, url=url, queue="q", **options) as server:
            yield server


async def test_round_trip(redis_server: Any, exec_log: str) -> None:
    async with open_queue(redis_server.url, "q") as q, host(redis_server.url, redis_jobs.square):
        assert await q.call(7, timeout=20) == 49
        ids = [await q.submit(i) for i in range(5)]
        assert [await q.result(i, timeout=20) for i in ids] == [i * i for i in range(5)]
        assert await q.result(ids[0], timeout=1) == 0  # results stay readable
        stats = await q.statistics()
    assert (stats.length, stats.pending, stats.dead) == (0, 0, 0)
    assert len(redis_jobs.executions(exec_log)) == 6
    queue = {
        name: value
        for name, labels, value in metric_samples(stats, queue="q")
        if "health" not in labels
    }
    assert queue["procsup_queue_backlog"] == 0
    assert queue["procsup_queue_capacity"] == 2  # one live host of 2 workers


async def test_error_is_final_and_typed(redis_server: Any, exec_log: str) -> None:
    async with open_queue(redis_server.url, "q") as q, host(redis_server.url) as server:
        with pytest.raises(RemoteJobError) as info:
            await q.call({"raise": "bad input"}, timeout=20)
        assert server.statistics().failed == 1
        host_figures = {name: value for name, _, value in metric_samples(server.statistics())}
        assert host_figures["procsup_serve_failed"] == 1
        assert host_figures["procsup_serve_healthy"] == 1
    err = info.value
    assert (err.type, err.message, err.deliveries) == ("ValueError", "bad input", 1)
    assert err.phase is None
    assert err.host == server.consumer
    assert len(redis_jobs.executions(exec_log)) == 1  # not retried


async def test_idempotent_resubmit_runs_once(redis_server: Any, exec_log: str) -> None:
    async with open_queue(redis_server.url, "q") as q:
        first = await q.submit({"value": 1}, key="req-42")
        assert await q.submit({"value": 1}, key="req-42") == first
        async with host(redis_server.url):
            assert await q.result(first, timeout=20) == 1
            assert await q.submit({"value": 1}, key="req-42") == first  # after it ran too
            assert await q.result(first, timeout=20) == 1
    assert len(redis_jobs.executions(exec_log)) == 1


async def test_backlog_limit(redis_server: Any) -> None:
    async with open_queue(redis_server.url, "q", max_backlog=3) as q:
        for i in range(3):
            await q.submit(i)
        with pytest.raises(QueueFullError, match="is full: 3 entries") as info:
            await q.submit(3)
        assert info.value.max_backlog == 3
        assert (await q.statistics()).length == 3  # nothing was added


async def test_expired_entry_is_not_run(redis_server: Any, exec_log: str) -> None:
    async with open_queue(redis_server.url, "q") as q:
        stale = await q.submit({"value": "stale"}, ttl=0.05)
        fresh = await q.submit({"value": "fresh"}, ttl=60)
        await trio.sleep(0.2)
        async with host(redis_server.url) as server:
            with pytest.raises(RemoteJobError) as info:
                await q.result(stale, timeout=20)
            assert await q.result(fresh, timeout=20) == "fresh"
            assert server.statistics().expired == 1
    assert info.value.type == "ExpiredError"
    assert [e["arg"] for e in redis_jobs.executions(exec_log)] == [{"value": "fresh"}]


async def test_malformed_body_is_dead_lettered_without_running(
    redis_server: Any, exec_log: str
) -> None:
    stream = "procsup:{q}:s"
    redis_server.cli("XADD", stream, "*", "v", "1", "id", "bad1", "body", "{not json")
    redis_server.cli("XADD", stream, "*", "v", "1", "id", "bad2")  # no body at all
    async with open_queue(redis_server.url, "q") as q, host(redis_server.url) as server:
        for job in ("bad1", "bad2"):
            with pytest.raises(RemoteJobError) as info:
                await q.result(job, timeout=20)
            assert (info.value.type, info.value.phase) == ("DecodeError", "input")
        stats = await q.statistics()
        assert server.statistics().dead_lettered == 2
    assert (stats.length, stats.dead) == (0, 2)
    dead = redis_server.cli("XRANGE", "procsup:{q}:dead", "-", "+")
    assert "decode_error" in dead
    assert "bad1" in dead
    assert redis_jobs.executions(exec_log) == []


async def test_submit_rejects_what_is_not_json(redis_server: Any) -> None:
    async with open_queue(redis_server.url, "q") as q:
        with pytest.raises(TypeError):
            await q.submit({1, 2})
        assert (await q.statistics()).length == 0


async def test_oversize_body_is_refused_and_an_oversize_entry_is_not_run(
    redis_server: Any, exec_log: str
) -> None:
    async with open_queue(redis_server.url, "q", max_body_bytes=100) as q:
        with pytest.raises(BodyTooLargeError) as info:
            await q.submit("x" * 120)  # 122 bytes of JSON
        assert (info.value.size, info.value.max_body_bytes) == (122, 100)
        assert "122 bytes of JSON, over max_body_bytes 100" in str(info.value)
        assert isinstance(info.value, ValueError)
        assert (await q.statistics()).length == 0  # nothing enqueued
        assert await q.submit("x" * 80) != ""  # 82 bytes: under the cap
    # a producer that bypassed the check: the host dead-letters it unrun
    body = json.dumps("x" * 200)
    redis_server.cli("XADD", "procsup:{q}:s", "*", "v", "1", "id", "big", "body", body)
    async with (
        open_queue(redis_server.url, "q") as q,
        host(redis_server.url, max_body_bytes=150) as server,
    ):
        with pytest.raises(RemoteJobError) as err:
            await q.result("big", timeout=20)
        assert (err.value.type, err.value.phase) == ("BodyTooLargeError", "input")
        assert "202 bytes, over this host's max_body_bytes 150" in err.value.message
        assert server.statistics().dead_lettered == 1
        assert (await q.statistics()).dead == 1
    assert "too_large" in redis_server.cli("XRANGE", "procsup:{q}:dead", "-", "+")
    assert [e["arg"] for e in redis_jobs.executions(exec_log)] == ["x" * 80]
    with pytest.raises(ValueError, match="max_body_bytes"):
        async with open_queue(redis_server.url, "q", max_body_bytes=0):
            pass


async def test_a_server_without_functions_runs_the_library_as_a_script(
    tmp_path: Any, exec_log: str
) -> None:
    from redis_helpers import redis_server_for

    # like a managed Redis that forbids FUNCTION: the same Lua, by EVALSHA
    no_functions = ("--rename-command", "FUNCTION", "", "--rename-command", "FCALL", "")
    server = redis_server_for(tmp_path, *no_functions)
    try:
        refused = await trio.run_process(
            ["redis-cli", "-s", str(server.sock), "FUNCTION", "LIST"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert b"unknown command" in refused.stdout + refused.stderr
        async with open_queue(server.url, "q") as q:
            early = await q.submit({"value": "before any host"})  # a producer loads it
            async with host(server.url, max_deliveries=1):
                assert await q.result(early, timeout=20) == "before any host"
                assert await q.call(7, timeout=20) == 7
                with pytest.raises(RemoteJobError):  # dead-lettered (max_deliveries 1)
                    await q.call({"crash": True}, timeout=20)
                server.kill()
                server.start()  # the AOF keeps the queue, not the script cache
                # the producer's connection died with the server: a submit on it
                # may fail, and is retried with a key, as the contract says
                for _ in range(3):
                    try:
                        late = await q.submit(8, key="after the restart")
                        break
                    except coredis.exceptions.ConnectionError:
                        await trio.sleep(0.1)
                else:
                    pytest.fail("no submit got through after the restart")
                assert await q.result(late, timeout=30) == 8
            stats = await q.statistics()
        assert (stats.length, stats.pending, stats.dead, stats.redeliveries) == (0, 0, 1, 0)
    finally:
        server.kill()


def test_import_procsup_does_not_import_redis() -> None:
    import subprocess
    import sys

    code = "import procsup, sys; procsup.open_pool; print('coredis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert json.loads("1") == 1


async def test_worker_crash_is_redelivered(redis_server: Any, exec_log: str, tmp_path: Any) -> None:
    marker = str(tmp_path / "crashed")
    async with open_queue(redis_server.url, "q") as q, host(redis_server.url) as server:
        job = await q.submit({"crash_once": marker, "value": "survived"})
        assert await q.result(job, timeout=30) == "survived"
        assert server.statistics().released == 1
        record = json.loads(redis_server.cli("GET", f"procsup:{{q}}:r:{job}"))
    assert record["deliveries"] == 2
    assert len(redis_jobs.executions(exec_log)) == 2


async def test_retry_on_runs_again_and_other_errors_do_not(
    redis_server: Any, exec_log: str, tmp_path: Any
) -> None:
    marker = str(tmp_path / "raised")
    async with (
        open_queue(redis_server.url, "q") as q,
        host(redis_server.url, retry_on=(redis_jobs.Transient,)),
    ):
        job = await q.submit({"transient_once": marker, "value": "second time"})
        assert await q.result(job, timeout=30) == "second time"
        with pytest.raises(RemoteJobError, match="ValueError: final"):
            await q.call({"raise": "final"}, timeout=30)
    assert len(redis_jobs.executions(exec_log)) == 3


async def test_timeout_is_final_and_stops_the_worker(redis_server: Any, exec_log: str) -> None:
    async with open_queue(redis_server.url, "q") as q, host(redis_server.url, timeout=0.5):
        with pytest.raises(RemoteJobError) as info:
            await q.call({"sleep": 30}, timeout=30)
        assert await q.call({"value": "next"}, timeout=30) == "next"  # the host goes on
    assert (info.value.type, info.value.phase, info.value.deliveries) == ("TimeoutError", "job", 1)
    assert len(redis_jobs.executions(exec_log)) == 2


async def test_cancelled_blocking_read_loses_no_entry(redis_server: Any) -> None:
    async with open_queue(redis_server.url, "q") as q:
        with trio.move_on_after(1.0):  # cancels the first host in its blocked read
            async with host(redis_server.url, redis_jobs.square):
                await trio.sleep_forever()
        job = await q.submit(6)
        async with host(redis_server.url, redis_jobs.square) as second:
            assert await q.result(job, timeout=30) == 36
            assert second.statistics().received == 1
        stats = await q.statistics()
    assert (stats.length, stats.pending) == (0, 0)


async def test_gone_consumers_are_forgotten_only_when_nothing_is_pending(
    redis_server: Any,
) -> None:
    from procsup.redis._engine import open_engine

    stream = "procsup:{q}:s"
    async with open_queue(redis_server.url, "q") as q:
        await q.submit(1)
        await q.submit(2)
        redis_server.cli("XGROUP", "CREATE", stream, "procsup", "0")
        redis_server.cli(
            "XREADGROUP", "GROUP", "procsup", "holds-one", "COUNT", "1", "STREAMS", stream, ">"
        )
        redis_server.cli("XGROUP", "CREATECONSUMER", stream, "procsup", "holds-none")
        await trio.sleep(0.1)
        async with open_engine(redis_server.url, "q", consumer="gc") as engine:
            assert await engine.collect_garbage(0.05) == 1
        names = redis_server.cli("--json", "XINFO", "CONSUMERS", stream, "procsup")
        assert "holds-one" in names
        assert "holds-none" not in names


async def test_host_without_workers_hands_back_uncounted(redis_server: Any, exec_log: str) -> None:
    async with open_queue(redis_server.url, "q") as q:
        job = await q.submit({"value": "elsewhere"})
        async with (
            procsup.open_pool(
                redis_jobs.fail_init, idle=0, max_workers=1, max_acquire_attempts=1
            ) as broken_pool,
            open_server(
                broken_pool, redis_jobs.work, url=redis_server.url, queue="q", lease=2.0
            ) as broken,
        ):
            with trio.fail_after(20):
                while broken.statistics().released < 1:
                    await trio.sleep(0.02)
            assert broken.statistics().health == "degraded"  # and so it reads no more
            async with host(redis_server.url):
                assert await q.result(job, timeout=20) == "elsewhere"
            assert broken.statistics().received == 1
        record = json.loads(redis_server.cli("GET", f"procsup:{{q}}:r:{job}"))
    assert record["deliveries"] == 1  # the broken host's try did not count
    assert len(redis_jobs.executions(exec_log)) == 1


async def test_host_rides_out_error_replies(redis_server: Any) -> None:
    async with open_queue(redis_server.url, "q") as q, host(redis_server.url) as server:
        assert await q.call({"value": 1}, timeout=20) == 1
        redis_server.cli("CONFIG", "SET", "maxmemory", "1")  # every write: OOM error
        try:
            with trio.fail_after(20):
                while server.statistics().health != "degraded":
                    await trio.sleep(0.05)
        finally:
            redis_server.cli("CONFIG", "SET", "maxmemory", "0")
        assert await q.call({"value": 2}, timeout=20) == 2
        assert server.statistics().health == "ok"
