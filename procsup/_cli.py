"""The ``procsup`` command: ``procsup run`` and ``procsup demo``.

``rich`` draws the live progress bar (see :mod:`procsup._console`, shared
with ``procsup demo``); without it the command falls back to plain periodic
progress lines.

Exit status: 0 every job succeeded, 1 some failed (or no worker could start),
2 usage error, 128 + signal number when interrupted (130 for Ctrl-C).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import pickle
import signal
import stat
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import IO, TYPE_CHECKING, Any

import trio

from . import __version__
from ._console import Display, Tally, open_display
from ._errors import JobTimeoutError, NoWorkerAvailableError, WorkerError, WorkerStartError
from ._options import WORKER_LOOPS, WorkerOptions

if TYPE_CHECKING:
    from ._pool import Pool

__all__ = ["count_records", "error_fields", "load_callable", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

RUN_EPILOG = """\
Each input line is one JSON value; FUNC is called with it in a warm worker
process. Each output line is a JSON object, in input order:

  {"index": 0, "result": ...}
  {"index": 1, "error": {"type": ..., "message": ..., "phase": ...,
                         "exit_code": ..., "signal": ...}}

Examples:
  procsup run mymodel:predict -i inputs.jsonl -o results.jsonl \\
      --init mymodel:load --concurrency 4 --timeout 30
  seq 100 | procsup run mymath:square

Exit status: 0 all succeeded, 1 some failed, 2 usage error, 130 Ctrl-C.
"""

DEMO_EPILOG = """\
The demo warms a pool (each initializer takes 0.5 s, like loading a model)
and runs 36 jobs through it. Some misbehave on purpose: one crashes its
process, one hangs past its timeout, one exceeds the memory limit, and for a
while warm-ups fail. It ends with a summary table and checks that no process
is left behind.

Example:
  procsup demo

Exit status: 0 when every outcome was the expected one, 1 otherwise.
"""

MAIN_EPILOG = """\
Examples:
  procsup demo                                   # see what procsup is for
  procsup run mymodel:predict -i in.jsonl -o out.jsonl --init mymodel:load
  procsup run --help                             # every option of `run`
"""


class UsageError(Exception):
    """A mistake in the command line; reported in one line, exit status 2."""


# -- the command line ---------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``procsup`` argument parser, with its ``run`` and ``demo`` subcommands."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="procsup",
        description="Run Python functions in supervised pools of pre-warmed worker processes.",
        epilog=MAIN_EPILOG,
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=f"procsup {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="run a built-in workload that shows what procsup does",
        description="Run a built-in workload that shows what procsup does.",
        epilog=DEMO_EPILOG,
        formatter_class=fmt,
    )
    demo.set_defaults(handler=_cmd_demo)

    run = commands.add_parser(
        "run",
        help="call MODULE:FUNC on every JSON line of the input, in warm workers",
        description="Call MODULE:FUNC on every JSON line of the input, in warm worker processes.",
        epilog=RUN_EPILOG,
        formatter_class=fmt,
    )
    run.add_argument("func", metavar="MODULE:FUNC", help="the function to call on each input")
    run.add_argument(
        "--init",
        metavar="MODULE:FUNC",
        help="run once in each worker before its first job (e.g. load a model)",
    )
    run.add_argument(
        "--concurrency",
        type=_positive_int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="jobs at once, and the most worker processes alive (default: CPU count, %(default)s)",
    )
    run.add_argument(
        "--idle",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="warm workers to keep ready when idle (default: --concurrency)",
    )
    run.add_argument(
        "--timeout",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="stop a job (and its worker) after this long; the record says TimeoutError",
    )
    run.add_argument(
        "--max-jobs-per-worker",
        type=_positive_int,
        default=None,
        metavar="N",
        help="replace a worker after N jobs (default: no limit)",
    )
    run.add_argument(
        "--memory-limit-mb",
        type=_positive_float,
        default=None,
        metavar="N",
        help="kill a worker using more than N MiB; its job fails with MemoryLimitError",
    )
    run.add_argument(
        "--worker-loop",
        choices=WORKER_LOOPS,
        default=None,
        help="one event loop of this kind per worker, from --init to its last job "
        "(default: none; an async FUNC runs under a fresh trio.run per call)",
    )
    run.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        default=None,
        help="serve the pool's Prometheus metrics at http://HOST:PORT/metrics during the run "
        "(needs procsup[prometheus]; port 0 picks a free one; the address is printed on stderr)",
    )
    run.add_argument(
        "-i",
        "--input",
        default="-",
        metavar="INPUT",
        help="JSON lines to read, or - for standard input (default)",
    )
    run.add_argument(
        "-o",
        "--output",
        default="-",
        metavar="OUTPUT",
        help="where to write the result lines, or - for standard output (default)",
    )
    run.add_argument(
        "-q", "--quiet", action="store_true", help="no progress display, only the final summary"
    )
    run.set_defaults(handler=_cmd_run)
    from ._cli_redis import add_commands  # serve, submit, queue

    add_commands(commands, run)
    return parser


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``procsup`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.handler(args))
    except (KeyboardInterrupt, BaseExceptionGroup) as exc:
        # Ctrl-C outside `run`'s own handling: trio raises it where it lands,
        # possibly inside a nursery's group; the cleanup already ran.
        if isinstance(exc, BaseExceptionGroup) and exc.split(KeyboardInterrupt)[1] is not None:
            raise
        print("procsup: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo()


# -- procsup run ---------------------------------------------------------------


def error_fields(exc: BaseException) -> dict[str, Any]:
    """The ``error`` object of an output record, for a job's exception."""
    type_name = getattr(exc, "type_name", None) or type(exc).__name__  # RemoteError
    fields: dict[str, Any] = {
        "type": type_name.rsplit(".", 1)[-1],
        "message": str(exc),
        "phase": None,
        "exit_code": None,
        "signal": None,
    }
    if isinstance(exc, WorkerError):
        fields.update(phase=exc.phase, exit_code=exc.exit_code, signal=exc.signal_name)
    return fields


def load_callable(spec: str, what: str) -> Callable[..., Any]:
    """Import ``MODULE:FUNC`` in this process; raise :class:`UsageError`
    (one line) when it cannot be imported, called or sent to a worker."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"{what} must look like MODULE:FUNC (e.g. mymodel:predict), got {spec!r}")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # whatever the import raised, the user must fix it
        hint = ""
        if isinstance(exc, ModuleNotFoundError):
            hint = " (run procsup from the directory that holds it, or add that to PYTHONPATH)"
        reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        raise UsageError(f"cannot import {what} {spec!r}: {reason}{hint}") from exc
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UsageError(f"{what} {spec!r}: module {module_name!r} has no {attr!r}") from None
    if not callable(target):
        raise UsageError(f"{what} {spec!r} is not callable (it is a {type(target).__name__})")
    try:
        pickle.dumps(target)
    except Exception as exc:  # noqa: BLE001 -- any pickling failure means the same to the user
        raise UsageError(
            f"{what} {spec!r} cannot be sent to a worker ({exc}); use a module-level function"
        ) from None
    return target  # type: ignore[no-any-return]


def _make_cwd_importable() -> None:
    """Like ``python -m``: modules in the working directory import, here and
    in the workers (which get this process's ``sys.path``)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


class _RunConfig:
    """The checked settings of one ``procsup run``."""

    def __init__(self, args: argparse.Namespace) -> None:
        """Check ``args`` and import FUNC and ``--init`` here, before any
        worker starts; raise :class:`UsageError` on the first problem."""
        self.concurrency: int = args.concurrency
        self.idle: int = args.concurrency if args.idle is None else args.idle
        if self.idle > self.concurrency:
            raise UsageError(
                f"--idle {self.idle} is more than --concurrency {self.concurrency}: "
                "the pool never has more workers than --concurrency"
            )
        self.timeout: float | None = args.timeout
        self.max_jobs: int | None = args.max_jobs_per_worker
        self.memory_limit_mb: float | None = args.memory_limit_mb
        self.worker_loop: str | None = args.worker_loop
        try:
            WorkerOptions(worker_loop=self.worker_loop)
        except ModuleNotFoundError as exc:  # uvloop is not installed
            raise UsageError(f"--worker-loop {self.worker_loop}: {exc}") from None
        self.quiet: bool = args.quiet
        metrics = getattr(args, "metrics", None)  # `procsup serve` shares this class, not the flag
        self.metrics = _metrics_address(metrics) if metrics else None
        _make_cwd_importable()
        self.fn = load_callable(args.func, "MODULE:FUNC")
        self.init = load_callable(args.init, "--init") if args.init else None


class _Writer:
    """Writes records in input order, each as soon as all before it are out,
    and flushes after each line (an interrupted run keeps what it wrote)."""

    window = 10_000  # records that may wait for an earlier one; then reading pauses

    def __init__(self, out: IO[str], display: Display, tally: Tally, to_terminal: bool) -> None:
        self._out = out
        self._display = display
        self._tally = tally
        self._to_terminal = to_terminal
        self._pending: dict[int, str] = {}
        self._next = 0
        self._moved = trio.Event()
        self.broken = False

    @property
    def written(self) -> int:
        return self._next

    def complete(self, index: int, record: dict[str, Any]) -> None:
        line, error = _dump_record(record)  # first: a result that is not JSON is an error
        if error is not None:
            self._tally.failed[error["type"]] += 1
        self._tally.done += 1
        self._display.advance()
        self._pending[index] = line
        while self._next in self._pending and not self.broken:
            self._emit(self._pending.pop(self._next))
            self._next += 1
        self._moved.set()
        self._moved = trio.Event()

    async def wait_for_room(self, index: int) -> None:
        while index - self._next >= self.window:
            await self._moved.wait()

    def _emit(self, line: str) -> None:
        if self._to_terminal and self._display.print_output(line):
            return
        try:
            self._out.write(line + "\n")
            self._out.flush()
        except BrokenPipeError:
            self.broken = True


def _dump_record(record: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """The record's line, and its error (if any) as written: a result that
    cannot be written as JSON (a set, bytes, NaN) becomes an error record."""
    try:
        return json.dumps(record, allow_nan=False), record.get("error")
    except (TypeError, ValueError) as exc:  # the result is not JSON
        error = error_fields(exc)
        error["message"] = f"the result cannot be written as JSON: {exc}"
        error["phase"] = "output"
        return json.dumps({"index": record["index"], "error": error}), error


def open_run_pool(cfg: _RunConfig, **options: Any) -> AbstractAsyncContextManager[Pool]:
    """The pool of ``run`` and ``serve``: their shared options, plus ``options``."""
    from ._pool import open_pool

    return open_pool(
        cfg.init,
        idle=cfg.idle,
        max_workers=cfg.concurrency,
        max_jobs=cfg.max_jobs,
        memory_limit_mb=cfg.memory_limit_mb,
        worker_loop=cfg.worker_loop,
        **options,
    )


async def first_start_error(pool: Pool) -> NoWorkerAvailableError | None:
    """Why ``pool`` cannot start a single worker, or ``None`` once one has
    started: to fail fast on a broken ``--init``."""
    try:
        async with pool.acquire():
            return None
    except NoWorkerAvailableError as exc:
        return exc


class _Run:
    """One ``procsup run``: the pool, the input feed, the job loops, the writer."""

    def __init__(self, cfg: _RunConfig, in_fd: int, writer: _Writer, display: Display) -> None:
        self.cfg = cfg
        self.in_fd = in_fd
        self.writer = writer
        self.display = display
        self.signal: int | None = None
        self.start_error: NoWorkerAvailableError | None = None
        self.workers_started = 0
        self._everything = trio.CancelScope()

    async def main(self) -> None:
        with self._everything, trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._stop_on_signal, signals, self._everything)
                nursery.start_soon(self.display.tick)
                nursery.start_soon(self._count_total)
                await self._run_pool()
                nursery.cancel_scope.cancel()

    async def _stop_on_signal(self, signals: Any, scope: trio.CancelScope) -> None:
        async for signum in signals:
            self.signal = signum
            scope.cancel()  # every job is stopped, every worker reaped, on the way out
            return

    async def _count_total(self) -> None:
        total = await trio.to_thread.run_sync(count_records, self.in_fd, abandon_on_cancel=True)
        if total is not None:
            self.display.set_total(total)

    async def _run_pool(self) -> None:
        cfg = self.cfg
        # a job's output on stderr, with its worker's pid
        async with open_run_pool(cfg, capture_output=True) as pool:
            if cfg.metrics is not None:
                import procsup.metrics

                procsup.metrics.register(pool, name="run")
            if (error := await first_start_error(pool)) is not None:
                self.start_error = error
                return
            jobs_send, jobs_recv = trio.open_memory_channel[tuple[int, Any]](cfg.concurrency)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._feed, jobs_send)
                    async with jobs_recv:
                        for _ in range(cfg.concurrency):
                            nursery.start_soon(self._work, pool, jobs_recv.clone())
            finally:
                self.workers_started = pool.statistics().starts

    async def _feed(self, jobs: trio.MemorySendChannel[tuple[int, Any]]) -> None:
        async with jobs:
            index = 0
            async for raw in _read_lines(self.in_fd):
                if not raw.strip():
                    continue  # blank lines are not inputs
                await self.writer.wait_for_room(index)
                try:
                    value = json.loads(raw)
                except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
                    error = error_fields(exc)
                    error["phase"] = "input"
                    self.writer.complete(index, {"index": index, "error": error})
                else:
                    await jobs.send((index, value))
                index += 1
                if self.writer.broken:
                    self._everything.cancel()

    async def _work(self, pool: Any, jobs: trio.MemoryReceiveChannel[tuple[int, Any]]) -> None:
        cfg = self.cfg
        async with jobs:
            async for index, value in jobs:
                record: dict[str, Any] = {"index": index}
                try:
                    record["result"] = await pool.run(cfg.fn, value, timeout=cfg.timeout)
                except JobTimeoutError:
                    record["error"] = {
                        "type": "TimeoutError",
                        "message": f"the job did not finish within --timeout {cfg.timeout:g}s; "
                        "its worker was stopped",
                        "phase": "job",
                        "exit_code": None,
                        "signal": None,
                    }
                except Exception as exc:  # noqa: BLE001 -- a job's error becomes its record
                    record["error"] = error_fields(exc)
                self.writer.complete(index, record)
                if self.writer.broken:
                    self._everything.cancel()  # nobody reads the records any more


async def _read_lines(fd: int) -> AsyncIterator[bytes]:
    """Yield the lines (bytes, without ``\\n``) read from ``fd``; a blocking
    read runs in a thread that is abandoned if we are cancelled."""
    buffer = bytearray()
    while True:
        chunk = await trio.to_thread.run_sync(os.read, fd, 1 << 16, abandon_on_cancel=True)
        if not chunk:
            break
        start = len(buffer)
        buffer += chunk
        end = buffer.rfind(b"\n", start)
        if end < 0:
            continue
        lines = bytes(buffer[:end]).split(b"\n")
        del buffer[: end + 1]
        for line in lines:
            yield line
    if buffer:
        yield bytes(buffer)


def count_records(fd: int) -> int | None:
    """Non-blank lines from the current offset of ``fd`` to its end, if it is a
    regular file (without moving its offset); None for a pipe or a terminal."""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        offset = os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        return None
    count = 0
    blank = True  # the current line has only whitespace so far
    while chunk := os.pread(fd, 1 << 20, offset):
        offset += len(chunk)
        lines = chunk.split(b"\n")
        for i, line in enumerate(lines):
            if blank and line.strip():
                blank = False
            if i < len(lines) - 1:  # the line ended here
                count += not blank
                blank = True
    return count + (not blank)


def _cmd_run(args: argparse.Namespace) -> int:
    with _stdout_kept_for_records() if args.output == "-" else _no_stdout() as stdout:
        try:
            cfg = _RunConfig(args)
            in_fd = _open_input(args.input)
        except UsageError as exc:
            print(f"procsup run: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        try:
            if stdout is not None:
                return _run_and_report(cfg, in_fd, stdout, os.isatty(stdout.fileno()))
            try:
                out = open(args.output, "w", encoding="utf-8")  # noqa: SIM115 -- closed below
            except OSError as exc:
                print(
                    f"procsup run: error: cannot write {args.output!r}: {exc.strerror}",
                    file=sys.stderr,
                )
                return EXIT_USAGE
            with out:
                return _run_and_report(cfg, in_fd, out, False)
        finally:
            if in_fd != 0:
                os.close(in_fd)


@contextmanager
def _stdout_kept_for_records() -> Iterator[IO[str] | None]:
    """A private copy of stdout for the records, while file descriptor 1
    points at stderr: whatever the function, the workers or anything else
    print lands on stderr instead of among the records."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    out = os.fdopen(saved, "w", encoding="utf-8")
    try:
        yield out
    finally:
        os.dup2(saved, 1)
        try:
            out.close()
        except BrokenPipeError:
            pass


@contextmanager
def _no_stdout() -> Iterator[IO[str] | None]:
    yield None


def _open_input(path: str) -> int:
    if path == "-":
        return 0
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"cannot read input {path!r}: {exc.strerror}") from None


def _run_and_report(cfg: _RunConfig, in_fd: int, out: IO[str], out_is_terminal: bool) -> int:
    _show_warnings_on_stderr()
    tally = Tally(total=None)
    mode = "quiet" if cfg.quiet else "live" if sys.stderr.isatty() else "plain"
    try:
        metrics = _serve_metrics(cfg.metrics)
    except OSError as exc:
        host, port = cfg.metrics or ("", 0)
        print(f"procsup run: error: cannot serve metrics on {host}:{port}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with metrics, open_display("procsup run", tally, mode=mode) as display:
        writer = _Writer(out, display, tally, to_terminal=out_is_terminal)
        run = _Run(cfg, in_fd, writer, display)
        trio.run(run.main)
    return _report(run, tally)


def _metrics_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` of ``--metrics``, checked (and prometheus-client with it)."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]")  # [::1]:9100
    if not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--metrics {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9100")
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise UsageError(
            "--metrics needs prometheus-client: pip install 'procsup[prometheus]'"
        ) from None
    return host, int(port)


@contextmanager
def _serve_metrics(address: tuple[str, int] | None) -> Iterator[None]:
    """prometheus-client's HTTP server on ``address`` for the block (its
    default registry, where the run registers its pool)."""
    if address is None:
        yield
        return
    from prometheus_client import start_http_server

    host, port = address
    server, thread = start_http_server(port, addr=host)
    shown = f"[{host}]" if ":" in host else host
    print(f"procsup run: metrics at http://{shown}:{server.server_port}/metrics", file=sys.stderr)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _report(run: _Run, tally: Tally) -> int:
    err = sys.stderr
    if run.start_error is not None:
        print(f"procsup run: no worker could start: {run.start_error}", file=err)
        last = run.start_error.start_errors[-1] if run.start_error.start_errors else None
        if isinstance(last, WorkerStartError) and last.remote_traceback:
            print("the initializer's traceback, in the worker:", file=err)
            print(last.remote_traceback.rstrip(), file=err)
        return EXIT_FAILED
    elapsed = time.monotonic() - tally.started
    ok = tally.done - tally.failures
    print(
        f"procsup run: {tally.done} done: {ok} ok, {tally.failures} failed, "
        f"in {elapsed:.2f}s ({tally.rate():.1f}/s); workers started: {run.workers_started}",
        file=err,
    )
    if tally.failed:
        reasons = ", ".join(f"{name} {n}" for name, n in tally.failed.most_common())
        print(f"procsup run: failed by reason: {reasons}", file=err)
    if run.signal is not None:
        name = signal.Signals(run.signal).name
        print(
            f"procsup run: interrupted by {name}: {run.writer.written} records written, "
            "running jobs stopped, every worker reaped",
            file=err,
        )
        return 128 + run.signal
    if run.writer.broken:
        print("procsup run: the output was closed; stopped", file=err)
        return EXIT_FAILED
    return EXIT_OK if tally.failures == 0 else EXIT_FAILED


def _show_warnings_on_stderr() -> None:
    import logging

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                sys.stderr.write(self.format(record) + "\n")
            except Exception:  # noqa: BLE001 -- logging must not break the run
                self.handleError(record)

    class Format(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            if record.name.startswith("procsup.worker."):  # a job's own output line
                return record.getMessage()
            return super().format(record)

    root = logging.getLogger()
    if not root.handlers:
        handler = Handler()
        handler.setFormatter(Format("%(name)s: %(levelname)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
        logging.getLogger("procsup.worker").setLevel(logging.INFO)  # captured stdout too
