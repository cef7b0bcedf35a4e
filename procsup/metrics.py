"""Prometheus metrics for procsup pools (the ``procsup[prometheus]`` extra).

``register(pool)`` adds the pool to a collector in a prometheus-client
registry (the default one unless given); serve that registry the way
prometheus-client does -- its own HTTP server
(:func:`prometheus_client.start_http_server`) or its ASGI app
(:func:`prometheus_client.make_asgi_app`) -- and a scrape reads the pool's
:meth:`~procsup.Pool.statistics` at that moment. See :doc:`metrics` for the
metrics and a service that exposes them.

Nothing of procsup imports this module: ``import procsup`` and the workers
never load prometheus-client.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import trio

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Histogram
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover -- depends on the environment
    raise ImportError(
        "procsup.metrics needs prometheus-client: pip install 'procsup[prometheus]'"
    ) from exc

from ._outcomes import OUTCOMES

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from ._events import PoolEvent
    from ._pool import Pool, PoolStatistics

__all__ = ["BUCKETS", "register", "unregister"]

BUCKETS: tuple[float, ...] = (
    *(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    *(30.0, 60.0, 120.0, 300.0, float("inf")),
)
"""Histogram buckets, in seconds: from 1 ms (a warm job) to 5 minutes (a
model load, a long job)."""

_WORKER_STATES = ("idle", "warming", "busy", "closing")
_POOL_STATES = ("open", "draining", "closed")


def register(pool: Pool, registry: CollectorRegistry | None = None, *, name: str = "") -> None:
    """Export ``pool``'s metrics from ``registry`` (default: prometheus-client's
    global ``REGISTRY``), labelled ``pool=name`` (default: ``pool.name``, or
    ``"pool"`` when that is empty). Call it inside the pool's block, in its
    trio run; scrapes may then come from any thread.

    Raises:
        ValueError: another pool is registered there under the same name, or
            this pool is registered there already.
    """
    collector = shared_collector(REGISTRY if registry is None else registry, _PoolsCollector)
    collector.add(pool, name or pool.name or "pool")


def unregister(pool: Pool, registry: CollectorRegistry | None = None) -> None:
    """Stop exporting ``pool``'s metrics from ``registry``. Idempotent."""
    kinds = _collectors.get(REGISTRY if registry is None else registry, {})
    collector = kinds.get(_PoolsCollector)
    if collector is not None:
        collector.remove(pool)


_C = TypeVar("_C")

# One collector of a kind per registry: prometheus-client refuses two
# collectors that expose the same metric names, so all of a registry's pools
# (or queues) share one.
_collectors: weakref.WeakKeyDictionary[CollectorRegistry, dict[type, Any]] = (
    weakref.WeakKeyDictionary()
)


def shared_collector(registry: CollectorRegistry, kind: type[_C]) -> _C:
    """``registry``'s one collector of ``kind`` (made and registered on first use)."""
    kinds = _collectors.setdefault(registry, {})
    collector: _C | None = kinds.get(kind)
    if collector is None:
        collector = kinds[kind] = kind()
        registry.register(collector)  # type: ignore[arg-type]
    return collector


class _Watched:
    """One registered pool: how to read it from any thread, and its histograms."""

    def __init__(self, pool: Pool, name: str, histograms: _Histograms) -> None:
        self.pool = pool
        self.name = name
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.get_ident()
        self._init = histograms.init.labels(pool=name)
        self._wait = histograms.wait.labels(pool=name)
        self._job = histograms.job.labels(pool=name)
        self._spawned: dict[int | None, float] = {}  # pid -> when, until warm or gone
        self._job_started: dict[int | None, float] = {}  # pid -> when its job began

    # PoolObserver: called by the pool, in its thread
    def event(self, event: PoolEvent) -> None:
        kind, pid = event.kind, event.pid
        if kind == "start":
            self._spawned[pid] = event.time
        elif kind == "ready":
            if (spawned := self._spawned.pop(pid, None)) is not None:
                self._init.observe(event.time - spawned)
        elif kind == "job_started":
            self._job_started[pid] = event.time
        elif kind == "job_finished":
            if (started := self._job_started.pop(pid, None)) is not None:
                self._job.observe(event.time - started)
        else:  # start_failed, exited
            self._spawned.pop(pid, None)
            self._job_started.pop(pid, None)

    def acquired(self, seconds: float) -> None:
        self._wait.observe(seconds)

    def snapshot(self) -> tuple[PoolStatistics, str]:
        """The pool's statistics and state, read in its own thread (a
        consistent snapshot), or directly once its run has ended."""
        if threading.get_ident() != self._thread:
            try:
                return trio.from_thread.run_sync(self._read, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        return self._read()

    def _read(self) -> tuple[PoolStatistics, str]:
        stats = self.pool.statistics()
        return stats, stats.state


class _Histograms:
    def __init__(self) -> None:
        def histogram(name: str, what: str) -> Histogram:
            return Histogram(name, what, ["pool"], registry=None, buckets=BUCKETS)

        self.init = histogram(
            "procsup_init_duration_seconds",
            "Time from a worker's spawn to it being warm (its initializer returned).",
        )
        self.wait = histogram(
            "procsup_queue_wait_seconds", "Time an acquirer waited for a warm worker."
        )
        self.job = histogram("procsup_job_duration_seconds", "Time a job spent in its worker.")

    def collect(self) -> Iterator[Metric]:
        for histogram in (self.init, self.wait, self.job):
            yield from histogram.collect()

    def forget(self, name: str) -> None:
        for histogram in (self.init, self.wait, self.job):
            try:
                histogram.remove(name)
            except KeyError:
                pass


class _PoolsCollector(Collector):
    """The metrics of every pool registered in one registry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # register/unregister against scrapes
        self._watched: dict[str, _Watched] = {}
        self._histograms = _Histograms()

    def add(self, pool: Pool, name: str) -> None:
        with self._lock:
            if name in self._watched:
                raise ValueError(
                    f"a pool named {name!r} is registered in this registry already; "
                    "pass another name= (or unregister that pool first)"
                )
            if any(w.pool is pool for w in self._watched.values()):
                raise ValueError("this pool is registered in this registry already")
            watched = _Watched(pool, name, self._histograms)
            self._watched[name] = watched
        pool._observe(watched)

    def remove(self, pool: Pool) -> None:
        with self._lock:
            found = [w for w in self._watched.values() if w.pool is pool]
            for watched in found:
                del self._watched[watched.name]
                self._histograms.forget(watched.name)
        for watched in found:
            pool._observe(watched, stop=True)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            watched = list(self._watched.values())
        families = _Families()
        for each in watched:
            families.add(each.name, *each.snapshot())
        yield from families.all()
        yield from self._histograms.collect()


class _Families:
    """The gauges and counters of one scrape."""

    def __init__(self) -> None:
        pool = ["pool"]
        self.workers = GaugeMetricFamily(
            "procsup_workers", "Workers by state.", labels=[*pool, "state"]
        )
        self.live = GaugeMetricFamily(
            "procsup_workers_live", "Child processes that exist (all states).", labels=pool
        )
        self.waiting = GaugeMetricFamily(
            "procsup_acquirers_waiting", "Acquirers waiting for a worker.", labels=pool
        )
        self.target = GaugeMetricFamily(
            "procsup_target_idle", "The idle target at the current load.", labels=pool
        )
        self.state = GaugeMetricFamily(
            "procsup_pool_state",
            "1 for the pool's state, 0 for the others.",
            labels=[*pool, "state"],
        )
        self.starts = CounterMetricFamily(
            "procsup_worker_starts", "Worker processes started.", labels=pool
        )
        self.start_failures = CounterMetricFamily(
            "procsup_worker_start_failures", "Worker starts that failed.", labels=pool
        )
        self.jobs = CounterMetricFamily(
            "procsup_jobs", "Jobs that ended, by outcome.", labels=[*pool, "outcome"]
        )

    def add(self, name: str, stats: PoolStatistics, state: str) -> None:
        for worker_state in _WORKER_STATES:
            self.workers.add_metric([name, worker_state], getattr(stats, worker_state))
        self.live.add_metric([name], stats.live)
        self.waiting.add_metric([name], stats.waiting)
        self.target.add_metric([name], stats.target_idle)
        for pool_state in _POOL_STATES:
            self.state.add_metric([name, pool_state], float(pool_state == state))
        self.starts.add_metric([name], stats.starts)
        self.start_failures.add_metric([name], stats.start_failures)
        for outcome in OUTCOMES:
            self.jobs.add_metric([name, outcome], stats.jobs_by_outcome.get(outcome, 0))

    def all(self) -> Iterator[Metric]:
        yield from (self.workers, self.live, self.waiting, self.target, self.state)
        yield from (self.starts, self.start_failures, self.jobs)
