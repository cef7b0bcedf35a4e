"""``procsup serve``, ``procsup submit`` and ``procsup queue``: the queue commands.

coredis is imported only when one of them runs (the ``redis`` extra).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from functools import partial
from typing import Any

import trio

from ._cli_common import SETTING_DESTS, _positive_float, _positive_int

__all__ = ["add_commands"]

_POOL_OPTIONS = (
    *("init", "concurrency", "idle", "timeout", "max_jobs_per_worker", "memory_limit_mb"),
    "worker_loop",
    *SETTING_DESTS,  # --init-timeout, --start-method...: procsup run's settings flags
    "metrics",
)
_MISSING_EXTRA = "procsup: the queue commands need the redis extra: pip install 'procsup[redis]'"

SERVE_EPILOG = """\
Consumes the queue with a pool of warm workers: each job calls FUNC with its
JSON argument, and its result goes back to whoever submitted it. Takes jobs
only as workers are free; a dead host's jobs are taken back by the others
after --lease seconds. SIGTERM or Ctrl-C drains: no new jobs, running ones
finish (up to --drain-timeout), the rest go back to the queue.

Example:
  procsup serve mymodel:predict --init mymodel:load \\
      --redis redis://10.0.0.5:6379/0 --queue jobs --concurrency 8 --lease 30

Exit status: 143 / 130 after draining on SIGTERM / SIGINT, 1 no worker
could start, 2 usage error.
"""

SUBMIT_EPILOG = """\
Each input line is one JSON value, submitted as one job. Without --wait,
each output line is {"index": i, "id": JOB_ID}; with --wait, the job's
record in the `procsup run` format, plus its id:

  {"index": 0, "id": "...", "result": ...}
  {"index": 1, "id": "...", "error": {"type": ..., "message": ..., "phase": ...,
                                      "exit_code": ..., "signal": ...}}

Exit status: 0 all submitted (and, with --wait, succeeded), 1 otherwise.
"""


def add_commands(commands: Any, run: argparse.ArgumentParser) -> None:
    """Add ``serve``, ``submit`` and ``queue`` to ``procsup``'s subcommands;
    ``serve`` shares ``run``'s pool and worker options."""
    fmt = argparse.RawDescriptionHelpFormatter
    serve = commands.add_parser(
        "serve",
        help="consume a Redis queue with warm workers (one host of many)",
        description="Consume a Redis Streams queue with a pool of warm worker processes.",
        epilog=SERVE_EPILOG,
        formatter_class=fmt,
    )
    serve.add_argument("func", metavar="MODULE:FUNC", help="the function every job calls")
    for action in run._actions:
        if action.dest in _POOL_OPTIONS:
            serve._add_action(action)  # the same option objects as `run`'s
    _add_queue_options(serve)
    serve.add_argument("--group", default="procsup", help="consumer group (default: procsup)")
    serve.add_argument(
        "--lease",
        type=_positive_float,
        default=30.0,
        metavar="SECONDS",
        help="another host takes a job this host stops renewing for this long (default: 30)",
    )
    serve.add_argument(
        "--max-deliveries",
        type=int,
        default=3,
        metavar="N",
        help="dead-letter a job whose worker or host died this many times (default: 3)",
    )
    serve.add_argument(
        "--drain-timeout",
        type=_positive_float,
        default=300.0,
        metavar="SECONDS",
        help="on SIGTERM, wait this long for running jobs (default: 300)",
    )
    _add_metrics_interval(serve)
    _add_max_body_bytes(serve, "dead-letter, without running it, a job whose body is larger")
    serve.set_defaults(handler=_cmd_serve, quiet=True)

    submit = commands.add_parser(
        "submit",
        help="submit JSON lines to a Redis queue as jobs",
        description="Submit each JSON line of the input to a queue as one job.",
        epilog=SUBMIT_EPILOG,
        formatter_class=fmt,
    )
    _add_queue_options(submit)
    submit.add_argument("--wait", action="store_true", help="wait for and write each result")
    submit.add_argument(
        "--timeout",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="with --wait: give up on a result after this long",
    )
    submit.add_argument(
        "--ttl",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="a job not started within this long is not run",
    )
    _add_max_body_bytes(submit, "refuse a line whose JSON is larger (an input error record)")
    submit.set_defaults(handler=_cmd_submit)

    queue = commands.add_parser(
        "queue",
        help="inspect a Redis queue and its dead letters",
        description="Inspect a queue (status) and manage its dead-letter stream.",
        formatter_class=fmt,
    )
    _add_queue_options(queue)
    actions = queue.add_subparsers(dest="queue_command", metavar="ACTION", required=True)
    status = actions.add_parser("status", help="backlog, pending, dead letters and live hosts")
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        default=None,
        help="instead, serve the queue's Prometheus metrics at http://HOST:PORT/metrics until "
        "SIGTERM or Ctrl-C (needs procsup[prometheus]; port 0 picks a free one; the address "
        "is printed on stderr)",
    )
    _add_metrics_interval(status)
    dead = actions.add_parser("dead", help="list, show, requeue or purge dead letters")
    dead_actions = dead.add_subparsers(dest="dead_command", metavar="ACTION", required=True)
    dead_actions.add_parser("list", help="one JSON line per dead letter")
    for name, text in (("show", "one dead letter in full"), ("requeue", "put its job back")):
        dead_actions.add_parser(name, help=text).add_argument("dead_id", metavar="ID")
    dead_actions.add_parser("purge", help="delete every dead letter")
    queue.set_defaults(handler=_cmd_queue)


def _add_queue_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis",
        required=True,
        metavar="URL",
        help="the Redis server: redis://HOST:PORT/DB, rediss://... or unix:///PATH",
    )
    parser.add_argument("--queue", required=True, metavar="NAME", help="the queue's name")


def _add_metrics_interval(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-interval",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="with --metrics: read the queue's figures from Redis this often; a scrape serves "
        "the last reading (default: 5)",
    )


def _add_max_body_bytes(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--max-body-bytes",
        type=_positive_int,
        default=None,  # the library's default (1 MiB)
        metavar="BYTES",
        help=f"{what} (default: 1048576, 1 MiB)",
    )


def _body_cap(args: argparse.Namespace) -> dict[str, int]:
    """``max_body_bytes=`` when ``--max-body-bytes`` was given."""
    return {} if args.max_body_bytes is None else {"max_body_bytes": args.max_body_bytes}


def _redis() -> Any:
    try:
        import procsup.redis
    except ImportError:
        print(_MISSING_EXTRA, file=sys.stderr)
        raise SystemExit(2) from None
    return procsup.redis


# -- procsup serve ----------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    from ._cli_common import (
        EXIT_FAILED,
        EXIT_USAGE,
        UsageError,
        _RunConfig,
        _serve_metrics,
        _show_warnings_on_stderr,
    )

    redis = _redis()
    try:
        cfg = _RunConfig(args)
        if args.max_deliveries < 1:
            raise UsageError(f"--max-deliveries must be at least 1, got {args.max_deliveries}")
    except UsageError as exc:
        print(f"procsup serve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _show_warnings_on_stderr()
    outcome: dict[str, Any] = {}
    try:
        metrics = _serve_metrics(cfg.metrics, "procsup serve")
    except OSError as exc:
        host, port = cfg.metrics or ("", 0)
        print(
            f"procsup serve: error: cannot serve metrics on {host}:{port}: {exc}", file=sys.stderr
        )
        return EXIT_USAGE
    with metrics:
        trio.run(_serve, redis, cfg, args, outcome)
    if "start_error" in outcome:
        print(f"procsup serve: no worker could start: {outcome['start_error']}", file=sys.stderr)
        return EXIT_FAILED
    signum = outcome.get("signal", signal.SIGTERM)
    stats = outcome["stats"]
    print(
        f"procsup serve: drained after {signal.Signals(signum).name}: {stats.completed} "
        f"completed ({stats.failed} failed), {stats.released} handed back, "
        f"{stats.dead_lettered} dead-lettered, {stats.lease_lost} leases lost",
        file=sys.stderr,
    )
    return 128 + int(signum)


async def _serve(redis: Any, cfg: Any, args: argparse.Namespace, outcome: dict[str, Any]) -> None:
    from ._cli_common import first_start_error, open_run_pool

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        # a host reads while its load is below the threshold: at 1.0 all
        # --concurrency workers are used (the library default 0.7 keeps 30% back)
        async with open_run_pool(cfg, load_threshold=1.0) as pool:
            if (error := await first_start_error(pool)) is not None:
                outcome["start_error"] = error
                return
            async with trio.open_nursery() as queue_metrics:
                async with redis.open_server(
                    pool,
                    cfg.fn,
                    url=args.redis,
                    queue=args.queue,
                    group=args.group,
                    lease=args.lease,
                    max_deliveries=args.max_deliveries,
                    timeout=cfg.timeout,
                    drain_timeout=args.drain_timeout,
                    **_body_cap(args),
                ) as server:
                    if cfg.metrics is not None:
                        _export_metrics(pool, server)
                        await queue_metrics.start(
                            partial(redis.serve_queue_metrics, interval=args.metrics_interval),
                            args.redis,
                            args.queue,
                        )
                    print(
                        f"procsup serve: consuming queue {args.queue!r} as {server.consumer} "
                        f"(concurrency {cfg.concurrency}, lease {args.lease:g}s)",
                        file=sys.stderr,
                        flush=True,
                    )
                    async for signum in signals:
                        outcome["signal"] = signum
                        break
                    await server.drain()
                    outcome["stats"] = server.statistics()
                queue_metrics.cancel_scope.cancel()


def _export_metrics(pool: Any, server: Any) -> None:
    """The pool's metrics (:mod:`procsup.metrics`, ``pool="serve"``) and this
    host's (``procsup_serve_*``) in prometheus-client's default registry,
    which ``--metrics`` serves. Call it in the trio run."""
    import procsup.metrics

    from .redis._exporter import export_host

    procsup.metrics.register(pool, name="serve")
    export_host(server)


# -- procsup submit -----------------------------------------------------------------


def _cmd_submit(args: argparse.Namespace) -> int:
    redis = _redis()
    failures = trio.run(_submit, redis, args)
    return 1 if failures else 0


async def _submit(redis: Any, args: argparse.Namespace) -> int:
    from ._cli_common import _read_lines
    from .redis._errors import error_fields as fields

    failures = 0
    out = sys.stdout
    async with redis.open_queue(args.redis, args.queue, **_body_cap(args)) as queue:
        submitted: list[tuple[int, str | None, dict[str, Any] | None]] = []
        index = 0
        async for raw in _read_lines(0):
            if not raw.strip():
                continue
            try:
                job = await queue.submit(json.loads(raw), ttl=args.ttl)
            except (ValueError, redis.QueueFullError) as exc:
                phase = "input" if isinstance(exc, ValueError) else "queue"
                submitted.append((index, None, fields(type(exc).__name__, str(exc), phase)))
            else:
                submitted.append((index, job, None))
            index += 1
            if not args.wait:
                failures += _write(out, *submitted.pop())
        for i, job, early_error in submitted:  # --wait: in input order
            error: dict[str, Any] | None = early_error
            if job is not None:
                try:
                    value = await queue.result(job, timeout=args.timeout)
                except redis.RemoteJobError as exc:
                    error = _error_fields(exc)
                except trio.TooSlowError as exc:
                    error = fields("TimeoutError", str(exc), "queue")
                else:
                    failures += _write(out, i, job, None, value)
                    continue
            failures += _write(out, i, job, error)
    return failures


def _error_fields(exc: Any) -> dict[str, Any]:
    return {
        "type": exc.type,
        "message": exc.message,
        "phase": exc.phase,
        "exit_code": exc.exit_code,
        "signal": exc.signal,
    }


def _write(out: Any, index: int, job: str | None, error: dict[str, Any] | None, *value: Any) -> int:
    record: dict[str, Any] = {"index": index, "id": job}
    if error is not None:
        record["error"] = error
    elif value:
        record["result"] = value[0]
    out.write(json.dumps(record) + "\n")
    out.flush()
    return error is not None


# -- procsup queue ------------------------------------------------------------------


def _cmd_queue(args: argparse.Namespace) -> int:
    redis = _redis()
    if args.queue_command == "status" and args.metrics is not None:
        return _queue_metrics(redis, args)
    return int(trio.run(_queue, args))


def _queue_metrics(redis: Any, args: argparse.Namespace) -> int:
    """``queue status --metrics``: export the queue's figures until a signal."""
    from ._cli_common import EXIT_USAGE, UsageError, _metrics_address, _serve_metrics

    try:
        address = _metrics_address(args.metrics)
        metrics = _serve_metrics(address, "procsup queue status")
    except UsageError as exc:
        print(f"procsup queue status: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(
            f"procsup queue status: error: cannot serve metrics on {args.metrics}: {exc}",
            file=sys.stderr,
        )
        return EXIT_USAGE

    async def export() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    partial(redis.serve_queue_metrics, interval=args.metrics_interval),
                    args.redis,
                    args.queue,
                )
                async for _ in signals:
                    break
                nursery.cancel_scope.cancel()

    with metrics:
        trio.run(export)
    return 0


async def _queue(args: argparse.Namespace) -> int:
    from .redis._engine import open_engine

    async with open_engine(args.redis, args.queue) as engine:
        if args.queue_command == "status":
            stats = await engine.queue_stats()
            if args.json:
                print(
                    json.dumps(
                        {
                            "backlog": stats.backlog,
                            "pending": stats.pending,
                            "dead": stats.dead,
                            "length": stats.length,
                            "oldest_pending_age": stats.oldest_pending_age,
                            "hosts": stats.hosts,
                        }
                    )
                )
                return 0
            print(
                f"queue {args.queue!r}: backlog {stats.backlog}, pending {stats.pending}, "
                f"dead {stats.dead}, oldest pending {stats.oldest_pending_age:.1f}s"
            )
            for name, host in sorted(stats.hosts.items()):
                print(
                    f"  {name}: {host['health']}, {host['in_hand']}/{host['capacity']} in "
                    f"hand, idle {host['idle']}, busy {host['busy']}, load {host['load']:.2f}"
                )
            if not stats.hosts:
                print("  no live hosts")
            return 0
        command = args.dead_command
        if command == "list":
            for letter in await engine.dead_letters(count=10_000):
                print(json.dumps(letter))
        elif command == "show":
            found = [
                d
                for d in await engine.dead_letters(count=10_000)
                if args.dead_id in (d["dead_id"], d.get("id"))
            ]
            if not found:
                print(f"procsup queue: no dead letter {args.dead_id!r}", file=sys.stderr)
                return 1
            letter = dict(found[0])
            letter["error"] = json.loads(letter.get("error") or "null")
            print(json.dumps(letter, indent=2))
        elif command == "requeue":
            dead_ids = [
                d["dead_id"]
                for d in await engine.dead_letters(count=10_000)
                if args.dead_id in (d["dead_id"], d.get("id"))
            ]
            job = await engine.requeue_dead(dead_ids[0]) if dead_ids else None
            if job is None:
                print(f"procsup queue: no dead letter {args.dead_id!r}", file=sys.stderr)
                return 1
            print(f"requeued job {job}")
        else:
            print(f"purged {await engine.purge_dead()} dead letters")
    return 0
