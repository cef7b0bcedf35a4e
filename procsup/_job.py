"""A job in flight, as its caller's task waits for it: :class:`_Job`.

One slot, settled once: by the worker's answer (``succeed``/``fail``), by
its end (``lost``), or never (its caller cancelled and left). A batch
(:class:`procsup._batch.Batch`) is a ``_Job`` whose id moves on.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["_Job"]


class _Job:
    """A job's result, and the one task waiting for it. Lighter than a
    trio.Event: this is every job's round trip."""

    __slots__ = (
        "_waiter",
        "answered",
        "error",
        "expired",
        "id",
        "orphaned",
        "settled",
        "timeout",
        "value",
    )

    def __init__(self, job_id: int) -> None:
        self.id = job_id
        self.settled = False
        self.timeout = math.inf  # seconds from when it was sent
        self.expired = False  # its timeout elapsed: an answer no longer counts
        self.orphaned = False  # its caller left it running (kill_on_cancel=False)
        self.answered = False  # settled by the worker's answer (it returned or raised)
        self.value: Any = None
        self.error: BaseException | None = None  # set: the job's caller gets this
        self._waiter: trio.lowlevel.Task | None = None

    def succeed(self, value: Any) -> None:
        self.value = value
        self._settle()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._settle()

    def lost(
        self,
        last_begun: int,
        unstarted_error: Callable[[], BaseException],
        caller_error: Callable[[], BaseException],
    ) -> bool:
        """The process ended before answering; ``last_begun`` is the id in
        its start mark. Settle with the error of a job it began, or of one it
        never began (True: it may run elsewhere)."""
        if last_begun >= self.id:  # ids only grow: it took this one, or a later one
            self.fail(caller_error())
            return False
        self.fail(unstarted_error())
        return True

    def jobs_begun(self, unstarted: bool) -> int:
        """How many jobs the worker began for this one (a batch: several)."""
        return 0 if unstarted else 1

    def trim_at(self) -> float | None:
        """A batch: when to ask for the jobs its worker has not begun."""
        return None

    def trim_order(self) -> bytes:
        """A batch whose :meth:`trim_at` has come: the TRIM order for the
        jobs it has not begun, marked sent. Only a batch is trimmed."""
        raise TypeError("only a batch is trimmed")

    def give_back_from(self, first: int, given_back: Callable[[], BaseException]) -> bool:
        """A batch: jobs from id ``first`` on will never begin (TRIMMED);
        False: it asked for none. When the job it counts as running is one
        of them, its ``job_finished`` carries ``given_back()``."""
        return False

    def unwrap(self) -> Any:
        """The value, or raise the error."""
        if self.error is not None:
            raise self.error
        return self.value

    def _settle(self) -> None:
        self.settled = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            trio.lowlevel.reschedule(waiter)

    async def wait(self) -> None:
        """Until settled; cancellable (the result may still come later).
        Settled already: a schedule point only, so that an answer in hand
        is not dropped for a cancellation (as trio's own operations do)."""
        if self.settled:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        self._waiter = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self._waiter = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
