"""procsup.metrics: a pool's gauges, counters and histograms, scraped over
loopback from prometheus-client's own HTTP server and parsed as Prometheus
parses them."""

from __future__ import annotations

import itertools
import urllib.request
from collections.abc import Iterator
from typing import Any

import helpers
import pytest
import trio
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

import procsup
import procsup.metrics

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def endpoint() -> Iterator[tuple[CollectorRegistry, str]]:
    """A fresh registry, served on a free loopback port."""
    registry = CollectorRegistry()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield registry, f"http://127.0.0.1:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def scrape(url: str) -> Samples:
    def get() -> str:
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())

    text = await trio.to_thread.run_sync(get)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def expected_from(stats: procsup.PoolStatistics, pool: str) -> dict[tuple[str, Any], float]:
    """What a scrape must show for these statistics."""
    want: dict[tuple[str, Any], float] = {}
    for state in ("idle", "warming", "busy", "closing"):
        want[("procsup_workers", (("pool", pool), ("state", state)))] = getattr(stats, state)
    want[("procsup_workers_live", (("pool", pool),))] = stats.live
    want[("procsup_acquirers_waiting", (("pool", pool),))] = stats.waiting
    want[("procsup_target_idle", (("pool", pool),))] = stats.target_idle
    want[("procsup_worker_starts_total", (("pool", pool),))] = stats.starts
    want[("procsup_worker_start_failures_total", (("pool", pool),))] = stats.start_failures
    for outcome, count in stats.jobs_by_outcome.items():
        want[("procsup_jobs_total", (("outcome", outcome), ("pool", pool)))] = count
    return want


async def scrape_matching(url: str, pool: procsup.Pool, name: str) -> Samples:
    """A scrape taken while the statistics stood still, checked against them."""
    for _ in range(100):
        before = pool.statistics()
        samples = await scrape(url)
        if pool.statistics() == before:
            shown = {key: samples.get(key) for key in expected_from(before, name)}
            assert shown == expected_from(before, name)
            return samples
        await trio.sleep(0.05)
    raise AssertionError("the pool's statistics never stood still for a scrape")


_env_calls = itertools.count()


def env_failing_once(slot: int) -> dict[str, str]:
    if next(_env_calls) == 0:
        raise RuntimeError("the first start fails")
    return {}


async def test_a_scrape_shows_what_statistics_show(
    endpoint: tuple[CollectorRegistry, str],
) -> None:
    registry, url = endpoint
    async with procsup.open_pool(
        idle=2,
        max_workers=3,
        memory_limit_mb=150,
        memory_interval=0.05,
        env=env_failing_once,
        name="asr",
        backoff_base=0.01,
    ) as pool:
        procsup.metrics.register(pool, registry)
        await pool.wait_warm()
        for i in range(4):
            assert await pool.run(helpers.add, i, 1) == i + 1
        for _ in range(2):
            with pytest.raises(ValueError):
                await pool.run(helpers.raise_value_error)
        with pytest.raises(procsup.WorkerCrashedError):
            await pool.run(helpers.exit_now)
        with pytest.raises(procsup.MemoryLimitError):
            await pool.run(helpers.allocate_mb, 300)
        with trio.move_on_after(0.3):
            await pool.run(helpers.hang)

        # During a run: one job busy.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.run, helpers.sleep_for, 1.0)
            while pool.statistics().busy != 1:
                await trio.sleep(0.01)
            during = await scrape_matching(url, pool, "asr")
            assert value(during, "procsup_workers", pool="asr", state="busy") == 1

        while (stats := pool.statistics()).closing or stats.idle < stats.target_idle:
            await trio.sleep(0.02)
        samples = await scrape_matching(url, pool, "asr")
        stats = pool.statistics()
        assert stats.jobs_by_outcome == {
            "ok": 5,
            "error": 2,
            "crashed": 1,
            "timeout": 0,
            "cancelled": 1,
            "memory": 1,
        }
        assert stats.start_failures == 1
        assert value(samples, "procsup_pool_state", pool="asr", state="open") == 1
        assert value(samples, "procsup_pool_state", pool="asr", state="draining") == 0
        assert value(samples, "procsup_job_duration_seconds_count", pool="asr") == 10
        assert value(samples, "procsup_queue_wait_seconds_count", pool="asr") == 10
        # every warm worker was counted once (the failed start never warmed)
        warmed = stats.starts
        assert value(samples, "procsup_init_duration_seconds_count", pool="asr") == warmed
        assert value(samples, "procsup_job_duration_seconds_bucket", pool="asr", le="+Inf") == 10
        slow = value(samples, "procsup_job_duration_seconds_bucket", pool="asr", le="0.5")
        assert slow <= 9  # not the 1 s job
        procsup.metrics.unregister(pool, registry)
        assert not [key for key in await scrape(url) if ("pool", "asr") in key[1]]


async def test_pools_in_one_registry_need_their_own_names(
    endpoint: tuple[CollectorRegistry, str],
) -> None:
    registry, url = endpoint
    async with (
        procsup.open_pool(helpers.sleepy_init, idle=1) as first,
        procsup.open_pool(idle=2) as second,
    ):
        procsup.metrics.register(first, registry)  # named after its initializer
        with pytest.raises(ValueError, match="registered in this registry already"):
            procsup.metrics.register(first, registry, name="other")
        procsup.metrics.register(second, registry, name="second")
        with pytest.raises(ValueError, match="a pool named 'second' is registered"):
            procsup.metrics.register(second, registry, name="second")
        await first.wait_warm()
        await second.wait_warm()
        samples = await scrape(url)
        assert value(samples, "procsup_target_idle", pool="sleepy_init") == 1
        assert value(samples, "procsup_target_idle", pool="second") == 2
        procsup.metrics.unregister(first, registry)
        procsup.metrics.unregister(first, registry)  # idempotent
        procsup.metrics.unregister(second, registry)
    # after the pools' blocks: a scrape still works, with nothing of theirs
    assert not [key for key in await scrape(url) if key[1]]


def test_importing_procsup_does_not_import_prometheus() -> None:
    import subprocess
    import sys

    code = (
        "import sys, procsup; procsup.open_pool; procsup.Pool; "
        "print(any(m.startswith('prometheus_client') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
