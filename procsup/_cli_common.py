"""What the ``procsup`` commands share: ``run`` (:mod:`procsup._cli`) and
``serve`` (:mod:`procsup._cli_redis`) check the same settings, open the same
pool and report errors in the same record format.

Neither command module imports the other's code: both import this one.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import pickle
import sys
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._cpus import available_cpus
from ._errors import NoWorkerAvailableError, WorkerError
from ._options import START_METHODS, PoolOptions, WorkerOptions

if TYPE_CHECKING:
    from ._pool import Pool

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "SETTING_DESTS",
    "UsageError",
    "error_fields",
    "first_start_error",
    "load_callable",
    "open_run_pool",
    "pick_options",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


# -- checking the command line -------------------------------------------------


class UsageError(Exception):
    """A mistake in the command line; reported in one line, exit status 2."""


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
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a number, 0 or more, got {text!r}")
    return value


def _module_list(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"no module names in {text!r}")
    return names


@attrs.frozen
class _Setting:
    """A pool or worker option as a flag; its default is the library's."""

    flag: str
    option: str  # the open_pool keyword, and the argparse dest
    parse: Callable[[str], Any]
    metavar: str
    help: str
    choices: Sequence[str] | None = None
    unset: str = "none"  # what the option's None default means


# Every open_pool option that a shell can give (not: the callables initializer,
# load and on_event; env, which the workers inherit from the command; capture_output,
# since the workers' output goes to stderr anyway) beyond run's own flags (_cli.build_parser).
_SETTINGS = (
    _Setting(
        "--init-timeout", "init_timeout", _positive_float, "SECONDS", "how long --init may take"
    ),
    _Setting(
        "--start-method",
        "start_method",
        str,
        "METHOD",
        "how workers start: auto, exec (a fresh interpreter each) or forkserver",
        choices=("auto", *START_METHODS),
    ),
    _Setting(
        "--preload",
        "preload",
        _module_list,
        "MODULE,...",
        "modules the fork server imports once, for every worker (forkserver only)",
    ),
    _Setting(
        "--name", "name", str, "NAME", "what ps and top show for the workers", unset="--init's name"
    ),
    _Setting(
        "--memory-warn-mb",
        "memory_warn_mb",
        _positive_float,
        "N",
        "log a warning while a worker uses more than N MiB",
        unset="off",
    ),
    _Setting(
        "--recycle-above-mb",
        "recycle_above_mb",
        _positive_float,
        "N",
        "retire a worker gracefully after a job that leaves it above N MiB",
        unset="off",
    ),
    _Setting(
        "--memory-interval",
        "memory_interval",
        _positive_float,
        "SECONDS",
        "time between memory samples",
    ),
    _Setting(
        "--shutdown-timeout",
        "shutdown_timeout",
        _non_negative_float,
        "SECONDS",
        "how long a worker may take to stop",
    ),
    _Setting(
        "--cancel-grace",
        "cancel_grace",
        _non_negative_float,
        "SECONDS",
        "how long a stopped job (--timeout, Ctrl-C) may take before its worker is killed",
    ),
    _Setting(
        "--ping-interval", "ping_interval", _positive_float, "SECONDS", "time between health pings"
    ),
    _Setting(
        "--ping-timeout",
        "ping_timeout",
        _positive_float,
        "SECONDS",
        "kill a worker whose ping goes unanswered this long",
    ),
    _Setting(
        "--max-attempts",
        "max_acquire_attempts",
        _positive_int,
        "N",
        "failed rounds of worker starts before a job gives up",
    ),
    _Setting(
        "--acquire-timeout",
        "acquire_timeout",
        _positive_float,
        "SECONDS",
        "how long a job may wait for a worker",
        unset="no limit",
    ),
    _Setting(
        "--max-concurrent-starts",
        "max_concurrent_starts",
        _positive_int,
        "N",
        "workers warming at once",
        unset="the CPUs",
    ),
    _Setting(
        "--max-exiting",
        "max_exiting",
        _non_negative_int,
        "N",
        "workers past their last job that may be replaced before they are reaped (0: none)",
    ),
    _Setting(
        "--backoff-base",
        "backoff_base",
        _positive_float,
        "SECONDS",
        "first delay after a failed start",
    ),
    _Setting(
        "--backoff-cap",
        "backoff_cap",
        _positive_float,
        "SECONDS",
        "longest delay between failing starts",
    ),
    _Setting(
        "--load-threshold",
        "load_threshold",
        _positive_float,
        "FRACTION",
        "the busy fraction at which no idle worker is kept",
    ),
    _Setting(
        "--max-message-bytes",
        "max_message_bytes",
        _positive_int,
        "BYTES",
        "largest job argument or result",
    ),
    _Setting(
        "--shm-min-bytes",
        "shm_min_bytes",
        _positive_int,
        "BYTES",
        "buffers this large go through shared memory",
    ),
)


SETTING_DESTS = tuple(setting.option for setting in _SETTINGS)
"""The argparse dests of the settings flags (``procsup serve`` shares them)."""


def _library_default(setting: _Setting) -> str:
    """The option's default, from the options classes (the one source)."""
    for cls in (WorkerOptions, PoolOptions):
        for field in attrs.fields(cls):
            if field.name == setting.option:
                value = field.default
                if value is None or value == ():
                    return setting.unset
                return str(value).replace("%", "%%")
    raise LookupError(setting.option)


# -- running: the settings, the pool, the records --------------------------------


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
        self.drain_timeout: float = args.drain_timeout
        self.worker_loop: str | None = args.worker_loop
        try:
            WorkerOptions(worker_loop=self.worker_loop)
        except ModuleNotFoundError as exc:  # uvloop is not installed
            raise UsageError(f"--worker-loop {self.worker_loop}: {exc}") from None
        self.quiet: bool = args.quiet
        metrics = getattr(args, "metrics", None)  # `procsup serve` shares this class, not the flag
        self.metrics = _metrics_address(metrics) if metrics else None
        self.unordered: bool = getattr(args, "unordered", False)
        self.unpack: bool = getattr(args, "unpack", False)
        # the settings flags given; the others keep the library's defaults
        self.settings: dict[str, Any] = {
            name: getattr(args, name) for name in SETTING_DESTS if getattr(args, name) is not None
        }
        self._check_settings()
        _make_cwd_importable()
        self.fn = load_callable(args.func, "MODULE:FUNC")
        self.init = load_callable(args.init, "--init") if args.init else None

    def _check_settings(self) -> None:
        """Refuse what open_pool would refuse, before any worker starts."""
        given = {"idle": self.idle, "max_workers": self.concurrency, **self.settings}
        try:
            pick_options(PoolOptions, given)
            pick_options(WorkerOptions, given)
        except (TypeError, ValueError) as exc:
            message = str(exc)
            for setting in _SETTINGS:
                message = message.replace(setting.option, setting.flag)
            raise UsageError(message) from None

    def warn_if_oversubscribed(self) -> None:
        """Once, on stderr: --concurrency far above the CPUs is mostly queueing."""
        cpus = available_cpus()
        if self.concurrency > 2 * cpus:
            print(
                f"procsup run: warning: --concurrency {self.concurrency} is far above the "
                f"{cpus} CPU(s) this process may use; CPU-bound jobs only wait for each "
                "other (fine for jobs that mostly wait on I/O)",
                file=sys.stderr,
            )


def pick_options(cls: type[Any], given: dict[str, Any]) -> Any:
    """``cls`` made from the entries of ``given`` that are its options."""
    names = {field.name for field in attrs.fields(cls) if field.init}
    return cls(**{name: value for name, value in given.items() if name in names})


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
        **{**cfg.settings, **options},  # the settings flags given, then the command's own
    )


async def first_start_error(pool: Pool) -> NoWorkerAvailableError | None:
    """Why ``pool`` cannot start a single worker, or ``None`` once one has
    started: to fail fast on a broken ``--init``."""
    try:
        async with pool.acquire():
            return None
    except NoWorkerAvailableError as exc:
        return exc


async def _read_lines(fd: int) -> AsyncGenerator[bytes, None]:
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
def _serve_metrics(address: tuple[str, int] | None, command: str = "procsup run") -> Iterator[None]:
    """prometheus-client's HTTP server on ``address`` for the block (its
    default registry, where the run registers its pool)."""
    if address is None:
        yield
        return
    from prometheus_client import start_http_server

    host, port = address
    server, thread = start_http_server(port, addr=host)
    shown = f"[{host}]" if ":" in host else host
    print(f"{command}: metrics at http://{shown}:{server.server_port}/metrics", file=sys.stderr)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


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
