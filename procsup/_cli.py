"""The ``procsup`` command: ``procsup run`` and ``procsup demo``.

``rich`` draws the live progress bar (see :mod:`procsup._console`, shared
with ``procsup demo``); without it the command falls back to plain periodic
progress lines.

Exit status: 0 every job succeeded, 1 some failed (or no worker could start),
2 usage error, 128 + signal number when interrupted (130 for Ctrl-C, 143
after draining on SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import operator
import os
import signal
import stat
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any

import trio

from . import __version__
from ._cli_common import (
    _SETTINGS,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    _library_default,
    _non_negative_int,
    _positive_float,
    _positive_int,
    _read_lines,
    _RunConfig,
    _serve_metrics,
    _show_warnings_on_stderr,
    error_fields,
    first_start_error,
    open_run_pool,
)
from ._console import Display, Tally, open_display
from ._cpus import available_cpus
from ._errors import (
    JobTimeoutError,
    NoWorkerAvailableError,
    PoolClosedError,
    WorkerStartError,
)
from ._options import WORKER_LOOPS

__all__ = ["count_records", "main"]

DRAIN_TIMEOUT = 300.0  # seconds `procsup run` gives running jobs on SIGTERM (as `serve`)

RUN_EPILOG = """\
Each input line is one JSON value; FUNC is called with it in a warm worker
process (with --unpack, a JSON array is its positional arguments and an
object its keyword arguments). Each output line is a JSON object, in input
order (with --unordered, as jobs finish):

  {"index": 0, "result": ...}
  {"index": 1, "error": {"type": ..., "message": ..., "phase": ...,
                         "exit_code": ..., "signal": ...}}

Examples:
  procsup run mymodel:predict -i inputs.jsonl -o results.jsonl \\
      --init mymodel:load --concurrency 4 --timeout 30
  seq 100 | procsup run mymath:square

With -o FILE --resume, a rerun after an interruption appends to FILE only
the records of the inputs it does not hold yet: one record per input.

Defaults that differ from the library's (procsup.open_pool), because a run
is a batch of one function whose inputs are all queued at the start:
--idle is --concurrency (not 4: every worker has work at once), and
--max-jobs-per-worker has no limit (not 1: the workers' warm-up is paid
once, not per input). Every other setting has the library's default.

SIGTERM drains: no new job starts, running ones may finish within
--drain-timeout, their records are written; then exit 143. Ctrl-C (or a
second signal) stops running jobs at once.

Exit status: 0 all succeeded, 1 some failed, 2 usage error, 130 Ctrl-C,
143 SIGTERM.
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
        default=available_cpus(),
        metavar="N",
        help="jobs at once, and the most worker processes alive (default: the CPUs this "
        "process may use, %(default)s, as the library's max_workers)",
    )
    run.add_argument(
        "--idle",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="warm workers to keep ready when idle (default: --concurrency, since every "
        "worker has work at once; the library keeps up to 4)",
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
        help="replace a worker after N jobs (default: no limit, so that the warm-up is paid "
        "once per worker; the library's default is 1, a fresh process per job)",
    )
    run.add_argument(
        "--memory-limit-mb",
        type=_positive_float,
        default=None,
        metavar="N",
        help="kill a worker using more than N MiB; its job fails with MemoryLimitError",
    )
    run.add_argument(
        "--drain-timeout",
        type=_positive_float,
        default=DRAIN_TIMEOUT,
        metavar="SECONDS",
        help="on SIGTERM, start no new job and give running ones this long to finish "
        "(default: %(default)g)",
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
        "--unordered",
        action="store_true",
        help="write each record as its job finishes, not in input order",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="with -o FILE: keep FILE's records and run only the inputs it has none for",
    )
    run.add_argument(
        "--unpack",
        action="store_true",
        help="a JSON array line is FUNC's positional arguments, an object its keyword "
        "arguments (any other value is its one argument)",
    )
    settings = run.add_argument_group(
        "pool and worker settings", "as the procsup.open_pool options of the same names"
    )
    for setting in _SETTINGS:
        settings.add_argument(
            setting.flag,
            dest=setting.option,
            type=setting.parse,
            choices=setting.choices,
            default=None,
            metavar=None if setting.choices else setting.metavar,
            help=f"{setting.help} (default: {_library_default(setting)})",
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


class _Writer:
    """Writes the records, flushing each line (an interrupted run keeps what it
    wrote): in input order, each as soon as all before it are out; or, not
    ordered, as they come. An input skipped by --resume counts as written."""

    window = 10_000  # records that may wait for an earlier one; then reading pauses

    def __init__(
        self, out: IO[str], display: Display, tally: Tally, to_terminal: bool, *, ordered: bool
    ) -> None:
        self._out = out
        self._display = display
        self._tally = tally
        self._to_terminal = to_terminal
        self._ordered = ordered
        self._pending: dict[int, str | None] = {}  # ordered: lines waiting (None: skipped)
        self._next = 0  # ordered: the index to write next
        self._moved = trio.Event()  # set (and renewed) when _next moves
        self.written = 0  # lines written by this run
        self.broken = False

    def complete(self, index: int, record: dict[str, Any]) -> None:
        line, error = _dump_record(record)  # first: a result that is not JSON is an error
        if error is not None:
            self._tally.failed[error["type"]] += 1
        self._tally.done += 1
        self._display.advance()
        self._put(index, line)

    def skip(self, index: int) -> None:
        """--resume: the output holds this input's record already."""
        self._put(index, None)

    def _put(self, index: int, line: str | None) -> None:
        if not self._ordered:
            if line is not None and not self.broken:
                self._emit(line)
            return
        self._pending[index] = line
        while self._next in self._pending and not self.broken:
            line = self._pending.pop(self._next)
            if line is not None:
                self._emit(line)
            self._next += 1
        self._moved.set()
        self._moved = trio.Event()

    async def wait_for_room(self, index: int) -> None:
        while self._ordered and index - self._next >= self.window:
            await self._moved.wait()

    def _emit(self, line: str) -> None:
        if self._to_terminal and self._display.print_output(line):
            self.written += 1
            return
        try:
            self._out.write(line + "\n")
            self._out.flush()
        except BrokenPipeError:
            self.broken = True
        else:
            self.written += 1


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


class _Run:
    """One ``procsup run``: the pool, the inputs, the map, the writer."""

    def __init__(
        self,
        cfg: _RunConfig,
        in_fd: int,
        writer: _Writer,
        display: Display,
        held: frozenset[int] = frozenset(),
    ) -> None:
        self.cfg = cfg
        self.in_fd = in_fd
        self.writer = writer
        self.display = display
        self.held = held  # --resume: the input indices the output has records for
        # The input index of each map input not yet settled (at most the map's window).
        self._index_of: dict[int, int] = {}
        self.signal: int | None = None
        self.drained = False  # the signal drained the pool (SIGTERM), not cancelled the run
        self.start_error: NoWorkerAvailableError | None = None
        self.workers_started = 0
        self._everything = trio.CancelScope()
        self._pool: Any = None  # set while the pool is open and serving inputs
        self._reading: trio.CancelScope | None = None  # around each read of the input

    async def main(self) -> None:
        with self._everything, trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._stop_on_signal, signals, self._everything)
                nursery.start_soon(self.display.tick)
                nursery.start_soon(self._count_total)
                await self._run_pool()
                nursery.cancel_scope.cancel()

    async def _stop_on_signal(self, signals: Any, scope: trio.CancelScope) -> None:
        """SIGTERM drains the pool (once it serves inputs); SIGINT, or a second
        signal, stops everything: every job is stopped, every worker reaped."""
        async with trio.open_nursery() as nursery:
            async for signum in signals:
                self.signal = signum
                if signum != signal.SIGTERM or self._pool is None or self.drained:
                    scope.cancel()
                    return
                self.drained = True
                nursery.start_soon(self._drain, self._pool)

    async def _drain(self, pool: Any) -> None:
        # No more input is read; the map ends once its running jobs settle.
        if self._reading is not None:
            self._reading.cancel()
        await pool.drain(self.cfg.drain_timeout)

    async def _count_total(self) -> None:
        total = await trio.to_thread.run_sync(count_records, self.in_fd, abandon_on_cancel=True)
        if total is not None:
            self.display.set_total(max(total - len(self.held), 0))

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
            self._pool = pool
            try:
                await self._map(pool)
            finally:
                self._pool = None
                self.workers_started = pool.statistics().starts

    async def _map(self, pool: Any) -> None:
        cfg = self.cfg
        async with pool.map(
            operator.call if cfg.unpack else cfg.fn,
            self._inputs(),
            max_in_flight=cfg.concurrency,
            ordered=False,  # the writer puts records in order (some have no job)
            timeout=cfg.timeout,
            return_exceptions=True,
        ) as results:
            async for position, outcome in results.indexed():
                index = self._index_of.pop(position)
                if self.drained and isinstance(outcome, PoolClosedError):
                    self.writer.skip(index)  # not started: no record (--resume runs it)
                    continue
                self.writer.complete(index, self._record(index, outcome))
                if self.writer.broken:
                    self._everything.cancel()  # nobody reads the records any more

    async def _inputs(self) -> AsyncIterator[Any]:
        """The map's inputs: each input line's value (or, --unpack, the call
        it makes), but for blank lines, lines that are not JSON (whose
        records are written here) and inputs --resume skips."""
        index = 0  # of the input line
        position = 0  # of the map input
        # map closes this generator in the task that iterates it
        async with contextlib.aclosing(_read_lines(self.in_fd)) as lines:
            while not self.drained:  # SIGTERM: no further input is read
                with trio.CancelScope() as self._reading:
                    raw = await anext(lines, None)
                if raw is None or self._reading.cancelled_caught:
                    return
                if not raw.strip():
                    continue  # blank lines are not inputs
                await self.writer.wait_for_room(index)
                if index in self.held:
                    self.writer.skip(index)
                else:
                    try:
                        value = json.loads(raw)
                    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
                        error = error_fields(exc)
                        error["phase"] = "input"
                        self.writer.complete(index, {"index": index, "error": error})
                    else:
                        self._index_of[position] = index
                        position += 1
                        yield _unpack(self.cfg.fn, value) if self.cfg.unpack else value
                index += 1
                if self.writer.broken:
                    self._everything.cancel()

    def _record(self, index: int, outcome: Any) -> dict[str, Any]:
        if isinstance(outcome, JobTimeoutError):
            error = {
                "type": "TimeoutError",
                "message": f"the job did not finish within --timeout {self.cfg.timeout:g}s; "
                "its worker was stopped",
                "phase": "job",
                "exit_code": None,
                "signal": None,
            }
            return {"index": index, "error": error}
        if isinstance(outcome, Exception):
            return {"index": index, "error": error_fields(outcome)}
        return {"index": index, "result": outcome}


def _unpack(fn: Callable[..., Any], value: Any) -> functools.partial[Any]:
    """--unpack: a JSON array is positional arguments, an object keyword
    arguments, any other value the one argument (for ``operator.call``)."""
    if isinstance(value, list):
        return functools.partial(fn, *value)
    if isinstance(value, dict):
        return functools.partial(fn, **value)
    return functools.partial(fn, value)


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
            if args.resume and args.output == "-":
                raise UsageError("--resume needs -o FILE: the output file to complete")
            held = held_indices(args.output) if args.resume else frozenset()
            in_fd = _open_input(args.input)
        except UsageError as exc:
            print(f"procsup run: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        cfg.warn_if_oversubscribed()
        try:
            if stdout is not None:
                return _run_and_report(cfg, in_fd, stdout, os.isatty(stdout.fileno()))
            mode = "a" if args.resume else "w"
            try:
                out = open(args.output, mode, encoding="utf-8")  # noqa: SIM115 -- closed below
            except OSError as exc:
                print(
                    f"procsup run: error: cannot write {args.output!r}: {exc.strerror}",
                    file=sys.stderr,
                )
                return EXIT_USAGE
            with out:
                return _run_and_report(cfg, in_fd, out, False, held)
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


def held_indices(path: str) -> frozenset[int]:
    """--resume: the input indices that the output file has records for.

    A last line without its newline (the run was killed while writing it)
    is cut off, so that its input runs again: one record per input.
    """
    held = set()
    try:
        out = open(path, "r+b")  # noqa: SIM115 -- closed by the with below
    except FileNotFoundError:
        return frozenset()  # nothing done yet
    except OSError as exc:
        raise UsageError(f"cannot read {path!r} to resume: {exc.strerror}") from None
    with out:
        offset = 0
        for number, line in enumerate(out, 1):
            if not line.endswith(b"\n"):
                out.truncate(offset)
                break
            offset += len(line)
            try:
                index = json.loads(line)["index"]
            except (ValueError, TypeError, KeyError):
                index = None
            if not isinstance(index, int) or isinstance(index, bool):
                raise UsageError(
                    f"{path!r} line {number} is not a procsup run record; --resume "
                    "completes a file that procsup run wrote"
                ) from None
            held.add(index)
    return frozenset(held)


def _open_input(path: str) -> int:
    if path == "-":
        return 0
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"cannot read input {path!r}: {exc.strerror}") from None


def _run_and_report(
    cfg: _RunConfig,
    in_fd: int,
    out: IO[str],
    out_is_terminal: bool,
    held: frozenset[int] = frozenset(),
) -> int:
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
        ordered = not cfg.unordered
        writer = _Writer(out, display, tally, to_terminal=out_is_terminal, ordered=ordered)
        run = _Run(cfg, in_fd, writer, display, held)
        trio.run(run.main)
    return _report(run, tally)


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
    if run.held:
        print(f"procsup run: resumed: {len(run.held)} inputs already had a record", file=err)
    if tally.failed:
        reasons = ", ".join(f"{name} {n}" for name, n in tally.failed.most_common())
        print(f"procsup run: failed by reason: {reasons}", file=err)
    if run.signal is not None:
        name = signal.Signals(run.signal).name
        stopped = "running jobs stopped"
        if run.drained and run.signal == signal.SIGTERM:
            stopped = f"drained (running jobs had --drain-timeout {run.cfg.drain_timeout:g}s)"
        print(
            f"procsup run: interrupted by {name}: {run.writer.written} records written, "
            f"{stopped}, every worker reaped",
            file=err,
        )
        return 128 + run.signal
    if run.writer.broken:
        print("procsup run: the output was closed; stopped", file=err)
        return EXIT_FAILED
    return EXIT_OK if tally.failures == 0 else EXIT_FAILED
