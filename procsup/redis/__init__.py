"""procsup on many hosts: a queue on Redis Streams consumer groups.

``procsup.redis.open_server`` runs a host (a pool consuming a queue);
``procsup.redis.open_queue`` is the producer's side. Needs the ``redis``
extra (``pip install 'procsup[redis]'``, the coredis client); ``import
procsup`` never imports this package, and workers never do.
"""

from __future__ import annotations

from ._engine import QueueStats
from ._errors import BodyTooLargeError, QueueFullError, RemoteJobError
from ._exporter import serve_queue_metrics
from ._metrics import metric_samples
from ._queue import Queue, open_queue
from ._server import Server, ServeStatistics, open_server

__all__ = [
    "BodyTooLargeError",
    "Queue",
    "QueueFullError",
    "QueueStats",
    "RemoteJobError",
    "ServeStatistics",
    "Server",
    "metric_samples",
    "open_queue",
    "open_server",
    "serve_queue_metrics",
]
