"""Host and queue figures as plain samples, for a metrics exporter to register."""

from __future__ import annotations

from collections import Counter

from ._engine import QueueStats
from ._server import COUNTERS, ServeStatistics

__all__ = ["QUEUE_COUNTERS", "Sample", "metric_samples"]

Sample = tuple[str, dict[str, str], float]  # (name, labels, value)
QUEUE_COUNTERS = ("leases_lost", "redeliveries")  # QueueStats fields that only go up


def metric_samples(stats: ServeStatistics | QueueStats, *, queue: str = "") -> list[Sample]:
    """``(name, labels, value)`` samples of a host's
    :meth:`~procsup.redis.Server.statistics` (``procsup_serve_*``, labelled
    ``consumer``; the counters are totals since the host started) or of a
    queue's :meth:`~procsup.redis.Queue.statistics` (``procsup_queue_*``,
    labelled ``queue``; ``leases_lost`` and ``redeliveries`` are totals
    since the queue was made): what :func:`procsup.redis.serve_queue_metrics`
    and ``procsup serve --metrics`` export.
    """
    if isinstance(stats, ServeStatistics):
        labels = {"consumer": stats.consumer}
        samples = [
            (f"procsup_serve_{name}", labels, float(getattr(stats, name)))
            for name in ("capacity", "in_hand", *COUNTERS)
        ]
        samples.append(("procsup_serve_connected", labels, float(stats.connected)))
        samples.append(("procsup_serve_healthy", labels, float(stats.health == "ok")))
        return samples
    labels = {"queue": queue}
    samples = [
        ("procsup_queue_backlog", labels, float(stats.backlog)),
        ("procsup_queue_pending", labels, float(stats.pending)),
        ("procsup_queue_dead_letters", labels, float(stats.dead)),
        ("procsup_queue_oldest_pending_age_seconds", labels, stats.oldest_pending_age),
        (
            "procsup_queue_capacity",
            labels,
            float(sum(h.get("capacity", 0) for h in stats.hosts.values())),
        ),
        *((f"procsup_queue_{n}", labels, float(getattr(stats, n))) for n in QUEUE_COUNTERS),
    ]
    health = Counter(h.get("health", "ok") for h in stats.hosts.values())
    for state in ("ok", "degraded", "draining"):
        samples.append(("procsup_queue_hosts", {**labels, "health": state}, float(health[state])))
    return samples
