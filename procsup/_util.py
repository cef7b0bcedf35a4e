"""Small helpers shared by the worker and the pool."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = ["NoPublicConstructor", "collapse_single_group"]

T = TypeVar("T")


class NoPublicConstructor(type):
    """Metaclass of a class that users get from procsup but must not make:
    calling the class raises :exc:`TypeError`; procsup makes instances with
    ``cls._create(...)`` (as trio does for its own such classes)."""

    def __call__(cls, *args: object, **kwargs: object) -> Any:
        raise TypeError(f"{cls.__module__}.{cls.__qualname__} has no public constructor")

    def _create(cls: type[T], *args: Any, **kwargs: Any) -> T:
        return super().__call__(*args, **kwargs)  # type: ignore[misc, no-any-return]


@contextmanager
def collapse_single_group() -> Iterator[None]:
    """Re-raise a lone exception out of a nursery's ExceptionGroup.

    Our context managers run background tasks that never raise, so a group
    with one member carries the caller's own exception: the caller should
    get it as it was raised, not wrapped.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) != 1:
            raise
        sole = group.exceptions[0]
        if isinstance(sole, BaseExceptionGroup):
            raise
        raise sole from sole.__cause__
