"""procsup: a trio-native supervisor for pools of pre-warmed worker processes.

This module only re-exports, and lazily: a worker process imports
``procsup._child`` through this package, and must not pay for trio.
"""

from __future__ import annotations

import importlib

# Not typing.TYPE_CHECKING: importing typing would cost every worker at start
# (benchmarks/where_time_goes.py measures a worker's start).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # the worker layer
    "open_worker": "procsup._worker",
    "Worker": "procsup._worker",
    "worker_state": "procsup._child",
    "worker_slot": "procsup._child",
    "in_worker": "procsup._child",
    "worker_nursery": "procsup._child_loop",
    # the pool layer
    "open_pool": "procsup._pool",
    "Pool": "procsup._pool",
    "PoolStatistics": "procsup._pool",
    "PoolEvent": "procsup._events",
    "idle_target": "procsup._load",
    "available_cpus": "procsup._cpus",
    # errors
    "ProcsupError": "procsup._errors",
    "UnsupportedPlatformError": "procsup._errors",
    "SerializationError": "procsup._errors",
    "PoolClosedError": "procsup._errors",
    "DescriptorLimitError": "procsup._errors",
    "WorkerError": "procsup._errors",
    "WorkerStartError": "procsup._errors",
    "WorkerCrashedError": "procsup._errors",
    "WorkerClosedError": "procsup._errors",
    "WorkerUnresponsiveError": "procsup._errors",
    "JobTimeoutError": "procsup._errors",
    "MemoryLimitError": "procsup._errors",
    "ProtocolError": "procsup._errors",
    "NoWorkerAvailableError": "procsup._errors",
    "RemoteError": "procsup._errors",
    "RemoteTraceback": "procsup._errors",
}

__all__ = ["__version__", *_EXPORTS]  # noqa: PLE0604 -- one list of names, kept in _EXPORTS


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'procsup' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from ._child import in_worker as in_worker
    from ._child import worker_slot as worker_slot
    from ._child import worker_state as worker_state
    from ._child_loop import worker_nursery as worker_nursery
    from ._cpus import available_cpus as available_cpus
    from ._errors import DescriptorLimitError as DescriptorLimitError
    from ._errors import JobTimeoutError as JobTimeoutError
    from ._errors import MemoryLimitError as MemoryLimitError
    from ._errors import NoWorkerAvailableError as NoWorkerAvailableError
    from ._errors import PoolClosedError as PoolClosedError
    from ._errors import ProcsupError as ProcsupError
    from ._errors import ProtocolError as ProtocolError
    from ._errors import RemoteError as RemoteError
    from ._errors import RemoteTraceback as RemoteTraceback
    from ._errors import SerializationError as SerializationError
    from ._errors import UnsupportedPlatformError as UnsupportedPlatformError
    from ._errors import WorkerClosedError as WorkerClosedError
    from ._errors import WorkerCrashedError as WorkerCrashedError
    from ._errors import WorkerError as WorkerError
    from ._errors import WorkerStartError as WorkerStartError
    from ._errors import WorkerUnresponsiveError as WorkerUnresponsiveError
    from ._events import PoolEvent as PoolEvent
    from ._load import idle_target as idle_target
    from ._pool import Pool as Pool
    from ._pool import PoolStatistics as PoolStatistics
    from ._pool import open_pool as open_pool
    from ._worker import Worker as Worker
    from ._worker import open_worker as open_worker
