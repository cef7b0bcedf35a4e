"""The one seam between procsup's queue logic and Redis.

Everything the host and the producer do to the queue is a method here; each
multi-step transition is one Redis Function (``procsup.lua``), so it is
atomic and decides time by the server's clock. A second engine (NATS
JetStream: fetch, ``+WPI``, ack, ``-NAK``, ``+TERM``) would implement the
same methods.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import attrs
import trio

try:
    import coredis
    import coredis.exceptions
    from coredis.retry import NoRetryPolicy
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "procsup.redis needs the coredis client: pip install 'procsup[redis]'"
    ) from exc

__all__ = [
    "CALL_TIMEOUT",
    "RESULT_TTL",
    "ConnectionLost",
    "Engine",
    "Entry",
    "QueueStats",
    "RedisFailure",
    "open_engine",
]

LIBRARY = "procsup_1"  # bump with every incompatible change to procsup.lua
CALL_TIMEOUT = 5.0  # seconds any one Redis call may take (blocking reads: plus their block)
RESULT_TTL = 3600  # seconds results and idempotency keys are kept
_RETIRE_AFTER = 2 * CALL_TIMEOUT + 10.0  # seconds: past the longest call (block + deadline)
_LUA = resources.files(__package__).joinpath("procsup.lua").read_text(encoding="utf-8")
# The same library as one EVALSHA script, for servers that refuse FUNCTION
# (some managed Redis): its functions go in a table, ARGV[1] names the one to run.
_SCRIPT = (
    "local procsup = {}\n"
    "local function register(name, fn) procsup[name] = fn end\n"
    + _LUA.split("\n", 1)[1].replace("redis.register_function(", "register(")
    + "\nlocal name = table.remove(ARGV, 1)\nreturn procsup[name](KEYS, ARGV)\n"
)

# What a broken or restarting server raises: the host backs off and retries.
ConnectionLost = (coredis.exceptions.ConnectionError, TimeoutError, OSError, trio.TooSlowError)
# What a host rides out: that, or any error reply (out of memory, a loading or
# read-only replica, a missing permission); it backs off, logs, and retries.
RedisFailure = (*ConnectionLost, coredis.exceptions.RedisError)
# Replies of a server that refuses FUNCTION/FCALL (unknown or forbidden).
_FUNCTIONS_REFUSED = (coredis.exceptions.UnknownCommandError, coredis.exceptions.AuthorizationError)
# Replies that mean the library is not loaded the way we call it: load it
# (a script cache emptied by a restart; FCALL refused: a producer goes to EVALSHA).
_NOT_LOADED = (coredis.exceptions.NoScriptError, *_FUNCTIONS_REFUSED)


@attrs.frozen
class Entry:
    """One delivery of a job to this host.

    Attributes:
        entry: the stream entry id (changes when a job is handed back).
        job_id: the job's id, stable across deliveries.
        body: the argument as the producer wrote it (JSON text).
        deliveries: this delivery's number, 1 for the first.
        expires_ms: the server time (ms) after which it must not run, or None.
    """

    entry: str
    job_id: str
    body: str | None
    deliveries: int
    expires_ms: int | None


@attrs.frozen
class QueueStats:
    """A queue's counts, cheap to read from any host or producer.

    Attributes:
        length: entries in the jobs stream (waiting + in flight).
        pending: entries delivered to a host and not finished.
        backlog: entries waiting for a host (``length - pending``).
        dead: entries in the dead-letter stream.
        oldest_pending_age: seconds the oldest pending entry has waited since
            it was enqueued, or 0.
        hosts: the live hosts' last reported status, by consumer name.
        leases_lost: entries taken back from a host that stopped renewing
            (it died, froze or was cut off), since the queue was made.
        redeliveries: deliveries after a job's first (taken back after a
            lost lease, or handed back after a worker crash or a
            ``retry_on`` error), since the queue was made.
    """

    length: int
    pending: int
    backlog: int
    dead: int
    oldest_pending_age: float
    hosts: dict[str, dict[str, Any]]
    leases_lost: int = 0
    redeliveries: int = 0


def queue_prefix(queue: str) -> str:
    """The prefix of every key of ``queue``; the hash tag keeps them in one slot."""
    return f"procsup:{{{queue}}}:"


class Engine:
    """A queue on one Redis server, for one consumer (host) or producer."""

    def __init__(
        self, url: str, queue: str, group: str, consumer: str, nursery: trio.Nursery
    ) -> None:
        self.client: Any = None  # the current coredis client; see connect()
        self._script: str | None = None  # the EVALSHA fallback's sha, once FUNCTION was refused
        self._url = url
        self._nursery = nursery
        self._client_scope: trio.CancelScope | None = None  # ends the current client
        self.queue = queue
        self.group = group
        self.consumer = consumer
        self.prefix = queue_prefix(queue)
        self.stream = self.prefix + "s"
        self.dead = self.prefix + "dead"
        self.hosts = self.prefix + "hosts"

    # -- set-up --------------------------------------------------------------

    async def connect(self) -> None:
        """Use a fresh client (its own connection pool) from now on, and close
        the old one. Called after each outage: coredis 6.9's pool loses a slot
        for every connection that dies while in use (64 in all), so a
        long-lived host would otherwise run out after enough outages."""
        scope = await self._nursery.start(self._hold_client)
        old, self._client_scope = self._client_scope, scope
        if old is not None:
            self._nursery.start_soon(self._retire, old)

    async def _retire(self, scope: trio.CancelScope) -> None:
        # Calls already made on the old client end by their own deadlines
        # first: closing it under them would fail them with a RuntimeError.
        await trio.sleep(_RETIRE_AFTER)
        scope.cancel()

    async def _hold_client(self, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        client = coredis.Redis.from_url(
            self._url,
            decode_responses=True,
            retry_policy=NoRetryPolicy(),  # a retried write could run twice; we retry ourselves
            connect_timeout=CALL_TIMEOUT,
        )
        with trio.CancelScope() as scope:
            async with client:
                self.client = client
                task_status.started(scope)
                await trio.sleep_forever()

    async def prepare(self) -> list[str]:
        """Load the functions, make the stream and group; return warnings about
        server settings that would lose jobs."""
        with trio.fail_after(CALL_TIMEOUT):
            await self._load()
            try:
                await self.client.xgroup_create(self.stream, self.group, "0", mkstream=True)
            except coredis.exceptions.StreamDuplicateConsumerGroupError:
                pass  # another host made it
            config = await self.client.config_get(["maxmemory-policy", "appendonly"])
        warnings = []
        if config.get("maxmemory-policy", "noeviction") != "noeviction":
            warnings.append(
                f"Redis maxmemory-policy is {config['maxmemory-policy']!r}: it may evict "
                "queued jobs; set it to 'noeviction'"
            )
        if config.get("appendonly", "yes") != "yes":
            warnings.append(
                "Redis appendonly is off: a server restart loses queued and running jobs; "
                "set 'appendonly yes'"
            )
        return warnings

    async def server_time_ms(self) -> float:
        """The server's clock, in ms."""
        with trio.fail_after(CALL_TIMEOUT):
            now = await self.client.time()
        return float(now.timestamp() * 1000)

    async def _load(self) -> None:
        """Load the library as Redis Functions or, on a server that refuses
        FUNCTION (unknown or forbidden), as one script run by EVALSHA."""
        if self._script is None:
            try:
                await self.client.function_load(_LUA, replace=True)
                return
            except _FUNCTIONS_REFUSED:
                pass
        self._script = str(await self.client.script_load(_SCRIPT))

    async def _call(self, name: str, args: Sequence[Any], *keys: str) -> Any:
        keys_ = [self.stream, self.dead, self.hosts, *keys]
        args_ = [self.prefix, self.group, self.consumer, *args]
        with trio.fail_after(CALL_TIMEOUT):
            try:
                return await self._invoke(name, keys_, args_)
            except coredis.exceptions.ResponseError as exc:
                if not isinstance(exc, _NOT_LOADED) and "Function not found" not in str(exc):
                    raise
            # a producer before any host, or a server restarted without its data
            await self._load()
            return await self._invoke(name, keys_, args_)

    async def _invoke(self, name: str, keys: list[str], args: list[Any]) -> Any:
        if self._script is None:
            return await self.client.fcall(name, keys, args)
        return await self.client.evalsha(self._script, keys, [name, *args])

    # -- the host's side -------------------------------------------------------

    async def fetch(self, n: int, block: float) -> list[Entry]:
        """Up to ``n`` new entries, waiting at most ``block`` seconds for one."""
        with trio.fail_after(CALL_TIMEOUT + block):
            reply = await self.client.xreadgroup(
                self.group,
                self.consumer,
                count=n,
                block=max(1, int(block * 1000)),
                streams={self.stream: ">"},
            )
        return [_entry(item, 1) for items in (reply or {}).values() for item in items]

    async def own_pending(self) -> list[str]:
        """Entry ids this consumer holds by the server's books (to find any
        that a lost or cancelled read delivered without this host knowing)."""
        with trio.fail_after(CALL_TIMEOUT):
            found = await self.client.xpending(
                self.stream, self.group, "-", "+", 1000, consumer=self.consumer
            )
        return [item.identifier for item in found]

    async def reclaim(self, n: int, lease: float, max_deliveries: int) -> list[Entry]:
        """Take up to ``n`` entries whose holder stopped renewing for ``lease`` s."""
        reply = await self._call("procsup_reclaim", [_ms(lease), max_deliveries, n, RESULT_TTL])
        return [
            Entry(entry, job, body or None, int(deliveries), int(exp) if exp else None)
            for entry, job, body, deliveries, exp in reply
        ]

    async def collect_garbage(self, idle: float) -> int:
        """Forget consumers with nothing pending, and host statuses, idle for
        ``idle`` s; how many consumers went."""
        return int(await self._call("procsup_gc", [_ms(idle)]))

    async def renew(self, entries: Sequence[str], status: dict[str, Any]) -> tuple[int, list[str]]:
        """Re-stamp the entries still held; publish ``status``. Returns the
        server time (ms) and the entries lost to another host."""
        reply = await self._call("procsup_renew", [json.dumps(status), *entries])
        return int(reply[0]), list(reply[1:])

    async def complete(self, entry: Entry, payload: str) -> bool:
        """Publish the job's result and finish it; False if the lease was lost."""
        done = await self._call(
            "procsup_complete", [entry.entry, entry.job_id, payload, RESULT_TTL]
        )
        return bool(done)

    async def release(self, entry: Entry, *, counted: bool, error: str = "") -> bool:
        """Hand the job back to the queue, at once; False if not held."""
        done = await self._call("procsup_requeue", [entry.entry, "1" if counted else "0", error])
        return bool(done)

    async def dead_letter(self, entry: Entry, reason: str, error: str, payload: str) -> bool:
        """Move the job to the dead-letter stream with its last error."""
        done = await self._call(
            "procsup_dead",
            [entry.entry, reason, entry.deliveries, error, payload, RESULT_TTL],
        )
        return bool(done)

    async def forget_host(self) -> None:
        """Drop this host's status (when it stops cleanly)."""
        with trio.fail_after(CALL_TIMEOUT):
            await self.client.hdel(self.hosts, [self.consumer])

    # -- the producer's side -----------------------------------------------------

    async def submit(
        self, job_id: str, body: str, key: str | None, ttl: float | None, max_backlog: int
    ) -> tuple[str, str, int]:
        """Returns ``(status, job_id, length)``, status ``new``, ``duplicate`` or ``full``."""
        keys = [self.prefix + "k:" + key] if key is not None else []
        args = [job_id, body, "" if ttl is None else _ms(ttl), max_backlog, RESULT_TTL]
        status, got, length = await self._call("procsup_submit", args, *keys)
        return str(status), str(got), int(length)

    async def wait_result(self, job_id: str, wait: float) -> str | None:
        """The job's result record (JSON), waiting up to ``wait`` s; None if none yet."""
        with trio.fail_after(CALL_TIMEOUT):
            got = await self.client.get(self.prefix + "r:" + job_id)
        if got is not None or wait <= 0:
            return got  # type: ignore[no-any-return]
        reply_key = self.prefix + "w:" + job_id
        with trio.fail_after(CALL_TIMEOUT + wait):
            popped = await self.client.blpop([reply_key], timeout=wait)
        if popped is None:
            return None
        payload = popped[1]
        with trio.fail_after(CALL_TIMEOUT):
            # pass it on: another caller may be waiting for the same job
            await self.client.lpush(reply_key, [payload])
        return payload  # type: ignore[no-any-return]

    # -- inspection ------------------------------------------------------------

    async def queue_stats(self) -> QueueStats:
        """The queue's counts and live hosts."""
        with trio.fail_after(CALL_TIMEOUT):
            length = await self.client.xlen(self.stream)
            dead = await self.client.xlen(self.dead)
            try:
                summary = await self.client.xpending(self.stream, self.group)
                pending = summary.pending
                oldest = summary.minimum_identifier
            except (coredis.exceptions.ResponseError, coredis.exceptions.StreamConsumerGroupError):
                # no group yet: no host ever ran
                pending, oldest = 0, None
            now = await self.client.time()
            raw_hosts = await self.client.hgetall(self.hosts)
            counts = await self.client.hgetall(self.prefix + "stats")
        now_ms = now.timestamp() * 1000
        age = max(0.0, (now_ms - int(oldest.split("-")[0])) / 1000) if oldest else 0.0
        hosts = {}
        for name, text in raw_hosts.items():
            status = json.loads(text)
            # a host that has not renewed in 3 leases is gone
            if now_ms - status.get("seen", 0) <= 3000 * status.get("lease", 30):
                hosts[name] = status
        return QueueStats(
            length,
            pending,
            max(0, length - pending),
            dead,
            age,
            hosts,
            leases_lost=int(counts.get("leases_lost", 0)),
            redeliveries=int(counts.get("redeliveries", 0)),
        )

    async def dead_letters(self, count: int = 100) -> list[dict[str, str]]:
        """The oldest ``count`` dead letters, each with its ``entry`` id."""
        with trio.fail_after(CALL_TIMEOUT):
            found = await self.client.xrange(self.dead, count=count)
        return [{"dead_id": item.identifier, **item.field_values} for item in found]

    async def requeue_dead(self, dead_id: str) -> str | None:
        """Put a dead letter's job back with a fresh count; its job id, or None."""
        got = await self._call("procsup_requeue_dead", [dead_id])
        return str(got) if got else None

    async def purge_dead(self) -> int:
        """Delete every dead letter; how many there were."""
        with trio.fail_after(CALL_TIMEOUT):
            count = await self.client.xlen(self.dead)
            await self.client.delete([self.dead])
        return int(count)


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _entry(item: Any, deliveries: int) -> Entry:
    fields = item.field_values
    exp = fields.get("exp")
    return Entry(
        entry=item.identifier,
        job_id=fields.get("id") or item.identifier,
        body=fields.get("body"),
        deliveries=int(fields.get("d") or 0) + deliveries,
        expires_ms=int(exp) if exp and exp.isdigit() else None,
    )


@asynccontextmanager
async def open_engine(
    url: str, queue: str, *, group: str = "procsup", consumer: str = ""
) -> AsyncIterator[Engine]:
    """A connected :class:`Engine` for ``queue`` on the server at ``url``
    (``redis://host:port/db``, ``rediss://...`` or ``unix:///path/to.sock``)."""
    async with trio.open_nursery() as nursery:
        engine = Engine(url, queue, group, consumer, nursery)
        await engine.connect()
        try:
            yield engine
        finally:
            nursery.cancel_scope.cancel()
