"""The producer's side: :func:`open_queue`."""

from __future__ import annotations

import json
import math
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from .._backoff import backoff_delay
from ._engine import ConnectionLost, Engine, QueueStats, open_engine
from ._errors import DEFAULT_MAX_BODY_BYTES, BodyTooLargeError, QueueFullError, RemoteJobError

__all__ = ["DEFAULT_MAX_BACKLOG", "Queue", "open_queue"]

DEFAULT_MAX_BACKLOG = 100_000  # entries (waiting + running) before submit refuses
_WAIT_STEP = 5.0  # seconds of one blocking wait for a result; then it looks again


class Queue:
    """A producer's handle on a queue. Made by :func:`open_queue`."""

    def __init__(self, engine: Engine, max_backlog: int, max_body_bytes: int) -> None:
        self._engine = engine
        self._max_backlog = max_backlog
        self._max_body_bytes = max_body_bytes

    async def submit(self, arg: Any, *, key: str | None = None, ttl: float | None = None) -> str:
        """Enqueue a job that calls the hosts' function with ``arg``; return its id.

        Args:
            arg: the function's one argument; must be JSON (the wire format).
            key: an idempotency key. A submit with a key seen in the last hour
                enqueues nothing and returns the first submit's job id.
            ttl: seconds (server time) after which the job must not start; it
                then finishes with an ``ExpiredError`` result. None: no limit.

        Raises:
            QueueFullError: the queue holds ``max_backlog`` entries; nothing
                was enqueued.
            BodyTooLargeError: ``arg``'s JSON is over ``max_body_bytes``;
                nothing was enqueued.
            TypeError: ``arg`` is not JSON-serializable.
            coredis.exceptions.ConnectionError: the connection to Redis was
                lost (a restart, a network fault); whether the job was enqueued
                is unknown. Submit again with the same ``key`` to be sure it is
                enqueued once.
        """
        body = json.dumps(arg, allow_nan=False)
        if len(body) * 4 > self._max_body_bytes:  # a character is at most 4 bytes
            size = len(body.encode("utf-8"))
            if size > self._max_body_bytes:
                raise BodyTooLargeError(size, self._max_body_bytes)
        if ttl is not None and not ttl > 0:
            raise ValueError(f"ttl must be a number of seconds above 0, got {ttl!r}")
        status, job_id, length = await self._engine.submit(
            uuid.uuid4().hex, body, key, ttl, self._max_backlog
        )
        if status == "full":
            raise QueueFullError(self._engine.queue, length, self._max_backlog)
        return job_id

    async def result(self, job_id: str, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        """Wait for job ``job_id`` and return its function's value.

        Any number of callers may wait for the same job; the result stays
        readable for an hour after the job finished.

        Raises:
            RemoteJobError: the job failed (its function raised, its worker
                crashed past ``max_deliveries``, it timed out or expired).
            trio.TooSlowError: no result within ``timeout`` seconds.

        While the server is unreachable it keeps trying (with backoff) until
        ``timeout``; then the connection error is raised.
        """
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        failures = 0
        while True:
            step = min(_WAIT_STEP, deadline - trio.current_time())
            try:
                payload = await self._engine.wait_result(job_id, max(step, 0.0))
            except ConnectionLost:  # waiting is safe to retry: the result stays
                failures += 1
                if failures == 1:
                    await self._engine.connect()
                if trio.current_time() >= deadline:
                    raise
                delay = backoff_delay(failures, base=0.1, cap=_WAIT_STEP, jitter=random.random())
                await trio.sleep(min(delay, max(0.0, deadline - trio.current_time())))
                continue
            failures = 0
            if payload is not None:
                record = json.loads(payload)
                if "error" in record:
                    raise RemoteJobError(record)
                return record.get("result")
            if trio.current_time() >= deadline:
                raise trio.TooSlowError(f"no result for job {job_id} within {timeout}s")

    async def call(self, arg: Any, *, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        """:meth:`submit` then :meth:`result`: the function's value for ``arg``."""
        return await self.result(await self.submit(arg), timeout=timeout)

    async def statistics(self) -> QueueStats:
        """The queue's backlog, pending and dead-letter counts and live hosts."""
        return await self._engine.queue_stats()


@asynccontextmanager
async def open_queue(
    url: str,
    queue: str,
    *,
    max_backlog: int = DEFAULT_MAX_BACKLOG,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> AsyncIterator[Queue]:
    """Connect to ``queue`` on the Redis server at ``url``, as a producer.

    Args:
        url: ``redis://host:port/db``, ``rediss://...`` (TLS) or
            ``unix:///path/to/redis.sock``.
        queue: the queue's name (the hosts' ``queue``).
        max_backlog: entries (waiting and running) past which
            :meth:`Queue.submit` raises :class:`QueueFullError`.
        max_body_bytes: bytes of JSON past which :meth:`Queue.submit`
            raises :class:`BodyTooLargeError` (default 1 MiB; keep it no
            larger than the hosts' ``max_body_bytes``).
    """
    if max_backlog < 1:
        raise ValueError(f"max_backlog must be at least 1, got {max_backlog!r}")
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be at least 1, got {max_body_bytes!r}")
    async with open_engine(url, queue) as engine:
        yield Queue(engine, max_backlog, max_body_bytes)
