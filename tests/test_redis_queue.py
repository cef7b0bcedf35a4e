"""procsup.redis against a real redis-server: the round trip and the entry
schema (in-process hosts; tests/test_redis_hosts.py runs `procsup serve`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis_jobs
import trio

import procsup
from procsup.redis import QueueFullError, RemoteJobError, open_queue, open_server

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


async def test_error_is_final_and_typed(redis_server: Any, exec_log: str) -> None:
    async with open_queue(redis_server.url, "q") as q, host(redis_server.url) as server:
        with pytest.raises(RemoteJobError) as info:
            await q.call({"raise": "bad input"}, timeout=20)
        assert server.statistics().failed == 1
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


def test_import_procsup_does_not_import_redis() -> None:
    import subprocess
    import sys

    code = "import procsup, sys; procsup.open_pool; print('coredis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert json.loads("1") == 1
