"""Frozen, validated settings of a worker and of a pool: the one place
that holds their defaults.

Validation happens here, in the parent, before any process starts: a bad
value is a ``TypeError`` or ``ValueError`` that names the option.

:func:`procsup.open_worker` and :func:`procsup.open_pool` list every option
in their signatures, so that a type checker sees them; tests/test_options.py
checks that those signatures, these classes, the functions' docstrings and
the tables in docs/reference.rst agree on names and defaults.
"""

from __future__ import annotations

import importlib.util
import math
import os
import pickle
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs

from ._cpus import available_cpus
from ._events import PoolEvent
from ._startup import EnvOption, check_env, default_name
from ._wire import MAX_BODY

__all__ = [
    "START_METHODS",
    "PoolOptions",
    "WorkerOptions",
    "check_initializer",
    "check_timeout",
    "pick",
]

OptionsT = TypeVar("OptionsT", bound=attrs.AttrsInstance)

START_METHODS = ("exec", "forkserver")
# "auto": default_start_method() chooses, when the worker or pool opens.
_START_METHOD_CHOICES = ("auto", *START_METHODS)
WORKER_LOOPS = ("asyncio", "uvloop", "trio")
START_METHOD_ENV = "PROCSUP_START_METHOD"


def default_start_method(*, pool: bool) -> str:
    """The start method used when none is given.

    ``$PROCSUP_START_METHOD`` if set; else ``"forkserver"`` for a pool on
    Linux (one template, then a fork per worker: much faster starts, see
    the benchmarks), and
    ``"exec"`` for a single worker (a template would double its start) and on
    other platforms (fork without exec is unsafe on macOS).
    """
    chosen = os.environ.get(START_METHOD_ENV)
    if chosen:
        if chosen not in START_METHODS:
            raise ValueError(f"${START_METHOD_ENV} must be one of {START_METHODS}, got {chosen!r}")
        return chosen
    return "forkserver" if pool and sys.platform.startswith("linux") else "exec"


Initializer = Callable[[], Any] | str | None


def _number(minimum: float, *, allow_none: bool = False, strict: bool = True) -> Any:
    """attrs validator: a real number > minimum (>= when not strict), or None."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None and allow_none:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{attribute.name} must be a number, got {type(value).__name__}")
        if math.isnan(value) or (value <= minimum if strict else value < minimum):
            sign = ">" if strict else ">="
            raise ValueError(f"{attribute.name} must be {sign} {minimum:g}, got {value!r}")

    return check


AUTO: Any = "auto"
"""The default of ``idle`` and ``max_workers``: chosen when the pool opens
(:meth:`PoolOptions.__attrs_post_init__`); typed Any so that the fields
keep the type they have once chosen."""
DEFAULT_IDLE = 4  # idle="auto": this many, or max_workers if fewer


def _count(
    minimum: int,
    *,
    allow_none: bool = False,
    allow_auto: bool = False,
    maximum: tuple[int, str] | None = None,
) -> Any:
    """attrs validator: an int >= minimum (and <= maximum[0], for the
    reason maximum[1]), or None, or "auto"."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if (value is None and allow_none) or (value == AUTO and allow_auto):
            return
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{attribute.name} must be an int, got {type(value).__name__}")
        if value < minimum:
            raise ValueError(f"{attribute.name} must be >= {minimum}, got {value!r}")
        if maximum is not None and value > maximum[0]:
            raise ValueError(
                f"{attribute.name} must be <= {maximum[0]} ({maximum[1]}), got {value!r}"
            )

    return check


def check_timeout(timeout: object) -> None:
    """A job's ``timeout``: a number of seconds > 0, or None."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, got {type(timeout).__name__}")
    if math.isnan(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")


def check_initializer(initializer: object) -> bytes:
    """Validate an initializer and return its pickled form (b"" for None).

    A ``"module:function"`` string must name an importable module; a callable
    must pickle: a module-level function, or anything with cloudpickle installed.
    """
    if initializer is None:
        return b""
    if isinstance(initializer, str):
        module, sep, name = initializer.partition(":")
        if not sep or not module or not name:
            raise ValueError(
                f"initializer string must look like 'module:function', got {initializer!r}"
            )
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError) as exc:
            found = None
            reason = f": {exc}"
        else:
            reason = ""
        if found is None:
            raise ValueError(f"initializer {initializer!r}: no module named {module!r}{reason}")
    elif not callable(initializer):
        raise TypeError(f"initializer must be a callable or 'module:function', got {initializer!r}")
    from ._pickle import dump_by_reference_or_value

    try:
        payload = dump_by_reference_or_value(initializer, initializer)
        pickle.loads(payload)  # what does not round-trip here fails in every worker
    except Exception as exc:
        raise TypeError(
            f"initializer {initializer!r} cannot be pickled ({exc}); use a module-level "
            "function or a 'module:function' string"
        ) from exc
    return payload


def _loop_name(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """attrs validator for ``worker_loop``: None, or one of WORKER_LOOPS whose
    library is installed (looked up, not imported)."""
    if value is None:
        return
    if value not in WORKER_LOOPS:
        raise ValueError(f"worker_loop must be None or one of {WORKER_LOOPS}, got {value!r}")
    if value == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise ModuleNotFoundError(
            "worker_loop='uvloop' needs uvloop, which is not installed: "
            "pip install 'procsup[uvloop]' (or use worker_loop='asyncio')",
            name="uvloop",
        )


def _module_names(value: object) -> tuple[str, ...]:
    """attrs converter for ``preload``: a list of module names, not one string
    (which ``tuple()`` would split into one-letter "modules")."""
    if isinstance(value, str):
        raise TypeError(f"preload must be a list of module names, got {value!r}; write [{value!r}]")
    try:
        return tuple(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"preload must be a list of module names, got {value!r}") from None


@attrs.frozen(kw_only=True)
class WorkerOptions:
    """Settings of one worker process. Times are in seconds, sizes in MiB.

    See :func:`procsup.open_worker` for what each option means.
    """

    initializer: Initializer = None
    init_timeout: float = attrs.field(default=10.0, validator=_number(0))
    max_jobs: int | None = attrs.field(default=1, validator=_count(1, allow_none=True))
    shutdown_timeout: float = attrs.field(default=5.0, validator=_number(0, strict=False))
    ping_interval: float = attrs.field(default=5.0, validator=_number(0))
    ping_timeout: float = attrs.field(default=10.0, validator=_number(0))
    memory_warn_mb: float | None = attrs.field(default=None, validator=_number(0, allow_none=True))
    memory_limit_mb: float | None = attrs.field(default=None, validator=_number(0, allow_none=True))
    memory_interval: float = attrs.field(default=0.5, validator=_number(0))
    recycle_above_mb: float | None = attrs.field(
        default=None, validator=_number(0, allow_none=True)
    )
    cancel_grace: float = attrs.field(default=1.0, validator=_number(0, strict=False))
    max_message_bytes: int = attrs.field(
        default=256 * 1024 * 1024,
        validator=_count(
            1024, maximum=(MAX_BODY, "the most a frame header's 4-byte length carries")
        ),
    )
    # Measured (docs/benchmarks.rst, "Large payloads"): below this a buffer
    # is cheaper through the socket than through shared memory.
    shm_min_bytes: int | None = attrs.field(
        default=128 * 1024, validator=_count(1, allow_none=True)
    )
    start_method: str = "auto"
    preload: tuple[str, ...] = attrs.field(default=(), converter=_module_names)
    # None: the initializer's name (default_name); set in __attrs_post_init__,
    # so never None after it.
    name: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(str))
    )
    env: EnvOption = attrs.field(default=None, validator=check_env)
    capture_output: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    worker_loop: str | None = attrs.field(default=None, validator=_loop_name)
    initializer_payload: bytes = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "initializer_payload", check_initializer(self.initializer))
        if self.name is None:
            object.__setattr__(self, "name", default_name(self.initializer))
        if self.start_method not in _START_METHOD_CHOICES:
            raise ValueError(
                f"start_method must be one of {_START_METHOD_CHOICES}, got {self.start_method!r}"
            )
        for name in self.preload:
            if not isinstance(name, str):
                raise TypeError(f"preload must list module names, got {name!r}")

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any], *, pool: bool) -> WorkerOptions:
        """The options among a function's ``arguments`` (its ``locals()``),
        with an ``"auto"`` start method chosen for a pool or a single worker."""
        options = pick(cls, arguments)
        return options.chosen(pool=pool)

    def chosen(self, *, pool: bool) -> WorkerOptions:
        """These options with an ``"auto"`` start method chosen."""
        if self.start_method != "auto":
            return self
        return attrs.evolve(self, start_method=default_start_method(pool=pool))


def pick(cls: type[OptionsT], arguments: Mapping[str, Any], **overrides: Any) -> OptionsT:
    """An options class made from the entries of ``arguments`` named as its
    fields (``overrides`` win)."""
    names = [f.name for f in attrs.fields(cls) if f.init and f.name not in overrides]
    return cls(**{name: arguments[name] for name in names}, **overrides)


@attrs.frozen(kw_only=True)
class PoolOptions:
    """Settings of a pool; see :func:`procsup.open_pool`."""

    # Both "auto" (AUTO) until __attrs_post_init__ chooses them, never after.
    idle: int = attrs.field(default=AUTO, validator=_count(0, allow_auto=True))
    max_workers: int | None = attrs.field(
        default=AUTO, validator=_count(1, allow_none=True, allow_auto=True)
    )
    max_concurrent_starts: int | None = attrs.field(
        default=None, validator=_count(1, allow_none=True)
    )
    max_acquire_attempts: int = attrs.field(default=3, validator=_count(1))
    acquire_timeout: float | None = attrs.field(default=None, validator=_number(0, allow_none=True))
    load: Callable[[], float] | None = None
    load_threshold: float = attrs.field(default=0.7, validator=_number(0))
    load_interval: float = attrs.field(default=1.0, validator=_number(0))
    backoff_base: float = attrs.field(default=0.1, validator=_number(0))
    backoff_cap: float = attrs.field(default=30.0, validator=_number(0))
    on_event: Callable[[PoolEvent], object] | None = None
    learn_modules: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    max_exiting: int = attrs.field(default=2, validator=_count(0))

    def __attrs_post_init__(self) -> None:
        if self.load is not None and not callable(self.load):
            raise TypeError(f"load must be a callable returning 0.0 to 1.0, got {self.load!r}")
        if self.on_event is not None and not callable(self.on_event):
            raise TypeError(f"on_event must be callable, got {self.on_event!r}")
        if self.load_threshold > 1.0:
            raise ValueError(f"load_threshold must be in (0, 1], got {self.load_threshold!r}")
        self._choose_sizes()
        if self.max_workers is not None and self.idle > self.max_workers:
            # wait_warm() would wait forever for an idle count it cannot reach
            raise ValueError(
                f"idle={self.idle} is more than max_workers={self.max_workers}: "
                "the pool could never keep that many warm"
            )

    def _choose_sizes(self) -> None:
        """Choose an "auto" ``max_workers`` and ``idle`` so that they always
        agree: ``max_workers``, available_cpus() (but never fewer than an
        ``idle`` given); ``idle``, DEFAULT_IDLE (but never more than
        ``max_workers``). A 1-CPU container gets idle=1, max_workers=1."""
        if self.max_workers == AUTO:
            given_idle = 0 if self.idle == AUTO else self.idle
            object.__setattr__(self, "max_workers", max(available_cpus(), given_idle))
        if self.idle == AUTO:
            object.__setattr__(self, "idle", min(DEFAULT_IDLE, self.max_workers or DEFAULT_IDLE))

    @property
    def start_slots(self) -> int:
        """Workers warming at once: ``max_concurrent_starts``, by default
        the available CPUs."""
        return self.max_concurrent_starts or available_cpus()
