"""Small helpers shared by the worker and the pool."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["collapse_single_group"]


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
