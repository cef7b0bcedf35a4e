"""The queue's metrics (procsup.redis.serve_queue_metrics) against a real
redis-server, read by real HTTP scrapes over loopback: backlog, pending and
dead letters follow the jobs as they are submitted, taken and dead-lettered."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis_jobs
import trio
from redis_helpers import scrape

import procsup
from procsup.redis import RemoteJobError, open_queue, open_server, serve_queue_metrics

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

Q = (("queue", "q"),)


@asynccontextmanager
async def http_registry() -> AsyncIterator[tuple[Any, str]]:
    """A fresh registry served by prometheus-client's HTTP server on loopback."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield registry, f"http://127.0.0.1:{server.server_port}/metrics"
    finally:
        await trio.to_thread.run_sync(server.shutdown)
        server.server_close()
        thread.join(5)


async def scraped_until(url: str, want: Callable[[dict[Any, float]], bool]) -> dict[Any, float]:
    """Scrape ``url`` until ``want`` holds for the samples (bounded)."""
    with trio.fail_after(20):
        while True:
            samples = await trio.to_thread.run_sync(scrape, url)
            if want(samples):
                return samples
            await trio.sleep(0.05)


def queue_figures(samples: dict[Any, float]) -> tuple[float | None, ...]:
    names = ("backlog", "pending", "dead_letters")
    return tuple(samples.get((f"procsup_queue_{name}", Q)) for name in names)


async def test_queue_metrics_follow_the_jobs(
    redis_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROCSUP_TEST_LOG", str(tmp_path / "executions.log"))
    gate = tmp_path / "gate"
    async with (
        http_registry() as (registry, url),
        open_queue(redis_server.url, "q") as q,
        trio.open_nursery() as nursery,
    ):
        export = partial(serve_queue_metrics, interval=0.1, registry=registry)
        await nursery.start(export, redis_server.url, "q")
        jobs = [await q.submit({"gate": str(gate), "value": i}) for i in range(3)]
        samples = await scraped_until(url, lambda s: queue_figures(s) == (3, 0, 0))
        assert samples[("procsup_queue_sample_age_seconds", Q)] < 5
        assert samples[("procsup_queue_hosts", (("health", "ok"), *Q))] == 0
        async with (
            procsup.open_pool(idle=2, max_workers=2) as pool,
            open_server(
                pool, redis_jobs.work, url=redis_server.url, queue="q", lease=2.0, max_deliveries=2
            ),
        ):
            # the host takes two (its capacity); the third waits
            samples = await scraped_until(url, lambda s: queue_figures(s) == (1, 2, 0))
            assert samples[("procsup_queue_capacity", Q)] == 2
            gate.touch()
            assert [await q.result(j, timeout=20) for j in jobs] == [0, 1, 2]
            # a job that crashes its worker every time: handed back once, then dead
            with pytest.raises(RemoteJobError):
                await q.call({"crash": True}, timeout=30)
            samples = await scraped_until(url, lambda s: queue_figures(s) == (0, 0, 1))
        assert samples[("procsup_queue_redeliveries_total", Q)] == 1
        assert samples[("procsup_queue_leases_lost_total", Q)] == 0
        nursery.cancel_scope.cancel()
    assert len(redis_jobs.executions(str(tmp_path / "executions.log"))) == 5


async def test_queue_metrics_stay_through_an_outage_and_say_their_age(redis_server: Any) -> None:
    async with (
        http_registry() as (registry, url),
        open_queue(redis_server.url, "q") as q,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(
            partial(serve_queue_metrics, interval=0.1, registry=registry), redis_server.url, "q"
        )
        await q.submit(1)
        await scraped_until(url, lambda s: queue_figures(s) == (1, 0, 0))
        redis_server.kill()
        # the last sample is still served, and its age grows past the interval
        samples = await scraped_until(url, lambda s: s[("procsup_queue_sample_age_seconds", Q)] > 1)
        assert queue_figures(samples) == (1, 0, 0)
        redis_server.start()
        await q.submit(2)  # the reader reconnects: fresh figures again
        samples = await scraped_until(url, lambda s: queue_figures(s) == (2, 0, 0))
        assert samples[("procsup_queue_sample_age_seconds", Q)] < 1
        nursery.cancel_scope.cancel()


async def test_one_registry_exports_a_queue_once(redis_server: Any) -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    export = partial(serve_queue_metrics, interval=0.1, registry=registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(export, redis_server.url, "q")
        with pytest.raises(ValueError, match="exported from this registry already"):
            await nursery.start(export, redis_server.url, "q")
        await nursery.start(export, redis_server.url, "other")  # another queue is fine
        nursery.cancel_scope.cancel()
    with pytest.raises(ValueError, match="interval"):
        await serve_queue_metrics(redis_server.url, "q", interval=0, registry=registry)


async def test_host_histograms_time_the_queue_wait_and_the_run(
    redis_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from procsup.redis._exporter import export_host

    monkeypatch.setenv("PROCSUP_TEST_LOG", str(tmp_path / "executions.log"))
    async with http_registry() as (registry, url), open_queue(redis_server.url, "q") as q:
        jobs = [await q.submit({"sleep": 0.2, "value": i}) for i in range(3)]
        await trio.sleep(0.5)  # they wait in the queue at least this long
        async with (
            procsup.open_pool(idle=2, max_workers=2) as pool,
            open_server(
                pool, redis_jobs.work, url=redis_server.url, queue="q", lease=2.0
            ) as server,
        ):
            export_host(server, registry)
            assert [await q.result(j, timeout=20) for j in jobs] == [0, 1, 2]
            host = (("consumer", server.consumer),)
            done = ("procsup_serve_end_to_end_seconds_count", host)
            samples = await scraped_until(url, lambda s: s.get(done) == 3)

    def figure(name: str) -> float:
        return samples[(f"procsup_serve_{name}", host)]

    assert figure("run_seconds_count") == figure("queue_wait_seconds_count") == 3
    assert figure("run_seconds_sum") >= 3 * 0.2  # each job sleeps 0.2 s in its worker
    assert figure("queue_wait_seconds_sum") >= 3 * 0.5 - 0.1  # server vs host clock: slack
    assert figure("end_to_end_seconds_sum") >= figure("queue_wait_seconds_sum")
    assert figure("completed_total") == 3
