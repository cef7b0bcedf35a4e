"""The queue's and the host's figures in a prometheus-client registry.

A scrape runs in prometheus-client's HTTP thread and cannot await Redis, so
the queue's figures are sampled by a trio task every ``interval`` seconds and
a scrape serves the last sample, with its age
(``procsup_queue_sample_age_seconds``). A scrape never waits on Redis (a
scrape during an outage still gets the pool's and the host's figures at
once), Redis sees the same few reads whoever scrapes and however often, and
the age shows how stale the queue's figures are. prometheus-client is
imported only when these run (the ``prometheus`` extra).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, NoReturn

import trio

from ._engine import RedisFailure, open_engine
from ._metrics import QUEUE_COUNTERS, Sample, metric_samples
from ._server import COUNTERS

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from ._server import Server

__all__ = ["DEFAULT_INTERVAL", "export_host", "serve_queue_metrics"]

log = logging.getLogger("procsup.redis")

DEFAULT_INTERVAL = 5.0  # seconds between two samples of a queue's figures

_HELP = {
    "procsup_queue_backlog": "Entries waiting for a host (no host holds them yet).",
    "procsup_queue_pending": "Entries held by a host (running or about to).",
    "procsup_queue_dead_letters": "Entries in the dead-letter stream.",
    "procsup_queue_oldest_pending_age_seconds": "Age of the oldest held entry since it was "
    "enqueued.",
    "procsup_queue_capacity": "Sum of the live hosts' capacity (max_workers).",
    "procsup_queue_hosts": "Live hosts, by health.",
    "procsup_queue_leases_lost": "Entries taken back from a host that stopped renewing.",
    "procsup_queue_redeliveries": "Deliveries after a job's first.",
    "procsup_queue_sample_age_seconds": "Seconds since the queue's figures were read from Redis.",
}


def families(samples: Iterable[Sample], counters: Iterable[str]) -> Iterator[Metric]:
    """``samples`` as metric families, one per name; names in ``counters``
    as counters (exported with ``_total``), the others as gauges."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    counting = set(counters)
    found: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
    for name, labels, value in samples:
        family = found.get(name)
        if family is None:
            kind = CounterMetricFamily if name in counting else GaugeMetricFamily
            what = _HELP.get(name) or f"This host's {name.removeprefix('procsup_serve_')}."
            family = found[name] = kind(name, what, labels=list(labels))
        family.add_metric(list(labels.values()), value)
    yield from found.values()


async def serve_queue_metrics(
    url: str,
    queue: str,
    *,
    interval: float = DEFAULT_INTERVAL,
    registry: CollectorRegistry | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Export ``queue``'s figures from ``registry`` (default: prometheus-client's
    global ``REGISTRY``) until cancelled, reading them from Redis every
    ``interval`` seconds; serve the registry the way prometheus-client does
    (:func:`prometheus_client.start_http_server`, its ASGI app).

    The gauges ``procsup_queue_backlog``, ``_pending``, ``_dead_letters``,
    ``_oldest_pending_age_seconds``, ``_capacity``, ``_hosts{health}`` and the
    counters ``procsup_queue_leases_lost_total`` and
    ``_redeliveries_total``, all labelled ``queue``, are the last sample; it
    is ``procsup_queue_sample_age_seconds`` old (about ``interval`` at most
    while Redis answers; it grows through an outage, when the last sample
    stays). Nothing is exported before the first sample. Use it with
    ``await nursery.start(serve_queue_metrics, url, queue)``: that returns
    after the first read (whether it worked or not).

    Raises:
        ValueError: ``interval`` is not above 0, or ``queue`` is exported
            from this registry already.
    """
    from prometheus_client import REGISTRY

    if not interval > 0 or math.isinf(interval):
        raise ValueError(f"interval must be a number of seconds above 0, got {interval!r}")
    collector = _collector_for(REGISTRY if registry is None else registry)
    sampled = collector.add(queue)
    try:
        async with open_engine(url, queue) as engine:
            up = True
            while True:
                try:
                    stats = await engine.queue_stats()
                except RedisFailure as exc:
                    if up:
                        log.warning("queue %r metrics: Redis failed (%s); retrying", queue, exc)
                        up = False
                        await engine.connect()  # a fresh client (see Engine.connect)
                else:
                    sampled.latest = (time.monotonic(), metric_samples(stats, queue=queue))
                    up = True
                task_status.started()
                task_status = trio.TASK_STATUS_IGNORED
                await trio.sleep(interval)
    finally:
        collector.remove(queue)


class _Sampled:
    """One queue's last sample. ``latest`` is replaced whole (by the trio
    task) and read whole (by scrapes): no lock needed."""

    latest: tuple[float, list[Sample]] | None = None  # (time.monotonic(), samples)


class _QueuesCollector:
    """The queue figures of every exported queue in one registry (one
    collector per registry: prometheus-client refuses two that expose the
    same names)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # add/remove against scrapes
        self._queues: dict[str, _Sampled] = {}

    def add(self, queue: str) -> _Sampled:
        with self._lock:
            if queue in self._queues:
                raise ValueError(f"queue {queue!r} is exported from this registry already")
            sampled = self._queues[queue] = _Sampled()
        return sampled

    def remove(self, queue: str) -> None:
        with self._lock:
            self._queues.pop(queue, None)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            latest = [(queue, s.latest) for queue, s in self._queues.items()]
        now, samples = time.monotonic(), []
        for queue, sample in latest:
            if sample is not None:
                at, values = sample
                samples += values
                age = ("procsup_queue_sample_age_seconds", {"queue": queue}, now - at)
                samples.append(age)
        yield from families(samples, [f"procsup_queue_{name}" for name in QUEUE_COUNTERS])


def _collector_for(registry: CollectorRegistry) -> _QueuesCollector:
    from ..metrics import shared_collector  # imports prometheus-client

    return shared_collector(registry, _QueuesCollector)


_HISTOGRAMS = {
    "queue_wait": "From a job's enqueue (its entry's, by the server's clock) to a worker "
    "taking it on this host.",
    "run": "From a worker taking a job on this host to its outcome.",
    "end_to_end": "From a job's enqueue to its result being published by this host.",
}


def export_host(server: Server, registry: CollectorRegistry | None = None) -> None:
    """Export ``server``'s figures (``procsup_serve_*``, and the histograms
    ``procsup_serve_queue_wait_seconds``, ``_run_seconds`` and
    ``_end_to_end_seconds``) from ``registry`` (default: the global
    ``REGISTRY``); call it in the server's trio run. A scrape reads
    :meth:`Server.statistics` in that run (no Redis call)."""
    from prometheus_client import REGISTRY, Histogram

    from ..metrics import BUCKETS

    histograms = {
        name: Histogram(
            f"procsup_serve_{name}_seconds", what, ["consumer"], registry=None, buckets=BUCKETS
        )
        for name, what in _HISTOGRAMS.items()
    }
    timers = {name: h.labels(consumer=server.consumer) for name, h in histograms.items()}
    server._timings.append(lambda name, seconds: timers[name].observe(seconds))

    token = trio.lowlevel.current_trio_token()
    trio_thread = threading.get_ident()

    class HostCollector:
        def collect(self) -> Iterator[Metric]:  # in the HTTP server's thread
            if threading.get_ident() == trio_thread:  # register() reads it once
                stats = server.statistics()
            else:
                try:
                    stats = trio.from_thread.run_sync(server.statistics, trio_token=token)
                except trio.RunFinishedError:
                    return
            counters = [f"procsup_serve_{name}" for name in COUNTERS]
            yield from families(metric_samples(stats), counters)
            for histogram in histograms.values():
                yield from histogram.collect()

    (REGISTRY if registry is None else registry).register(HostCollector())
