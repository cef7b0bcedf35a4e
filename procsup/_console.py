"""What ``procsup run`` and ``procsup demo`` share: a tally of finished
jobs and the progress displays.

``rich`` draws the live progress bar and is imported only when a display
opens: ``import procsup`` never loads it.
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import trio

__all__ = ["Display", "Tally", "open_display"]

_PLAIN_EVERY = 2.0  # seconds between plain progress lines
_RICH_HINT = "procsup: for a live progress bar, install rich: pip install 'procsup[cli]'"


class Tally:
    """Counts of finished jobs, shared by the display and the summary."""

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.done = 0
        self.failed: Counter[str] = Counter()
        self.started = time.monotonic()

    @property
    def failures(self) -> int:
        return sum(self.failed.values())

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0


class _PlainDisplay:
    """Progress as a plain line on stderr every few seconds and every 10%."""

    def __init__(self, label: str, tally: Tally, *, silent: bool = False) -> None:
        self._label = label
        self._tally = tally
        self._silent = silent
        self._printed_done = -1
        self._printed_at = -math.inf
        self._tenths = 0

    def set_total(self, total: int) -> None:
        self._tally.total = total

    def advance(self) -> None:
        total = self._tally.total
        if total:
            tenths = self._tally.done * 10 // total
            # every 10%, but not in a burst when jobs are quick
            if tenths > self._tenths and time.monotonic() - self._printed_at >= 0.5:
                self._tenths = tenths
                self._line()

    def note(self, text: str) -> None:
        print(text, flush=True)

    def print_output(self, line: str) -> bool:
        return False  # the caller writes it

    async def tick(self) -> None:
        while True:
            await trio.sleep(_PLAIN_EVERY)
            if self._tally.done != self._printed_done:
                self._line()

    def close(self) -> None:
        pass

    def _line(self) -> None:
        tally = self._tally
        self._printed_done = tally.done
        self._printed_at = time.monotonic()
        if self._silent:
            return
        rate = tally.rate()
        text = f"{self._label}: {tally.done}"
        if tally.total:
            text += f"/{tally.total} ({100 * tally.done // tally.total}%)"
        text += f" done, {tally.failures} failed, {rate:.1f}/s"
        if tally.total and rate > 0 and tally.done < tally.total:
            text += f", ETA {_duration((tally.total - tally.done) / rate)}"
        print(text, file=sys.stderr, flush=True)


class _RichDisplay:
    """A live progress bar (rich) on a terminal."""

    def __init__(self, label: str, tally: Tally) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            Task,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class RateColumn(ProgressColumn):
            def render(self, task: Task) -> Text:
                speed = task.finished_speed or task.speed
                return Text(f"{speed:.1f}/s" if speed else "-/s", style="progress.data.speed")

        self._tally = tally
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed"),
            RateColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            redirect_stdout=False,  # stdout carries the records, untouched
        )
        self._task = self._progress.add_task(label, total=tally.total, failed=0)
        self._progress.start()

    def set_total(self, total: int) -> None:
        self._tally.total = total
        self._progress.update(self._task, total=total)

    def advance(self) -> None:
        self._progress.update(self._task, completed=self._tally.done, failed=self._tally.failures)

    def note(self, text: str) -> None:
        self._progress.console.print(text, markup=False, highlight=False)

    def print_output(self, line: str) -> bool:
        # stdout is this terminal too: print above the bar rather than through it.
        self._progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
        return True

    async def tick(self) -> None:
        await trio.lowlevel.checkpoint()  # rich refreshes from its own thread

    def close(self) -> None:
        self._progress.stop()


Display = _PlainDisplay | _RichDisplay


@contextmanager
def open_display(label: str, tally: Tally, *, mode: str) -> Iterator[Display]:
    """Show progress: ``"live"``, a rich progress bar (plain lines if rich is
    not installed); ``"plain"``, periodic lines; ``"quiet"``, nothing."""
    display: Display
    if mode == "live":
        try:
            display = _RichDisplay(label, tally)
        except ImportError:
            print(_RICH_HINT, file=sys.stderr)
            display = _PlainDisplay(label, tally)
    else:
        display = _PlainDisplay(label, tally, silent=mode == "quiet")
    try:
        yield display
    finally:
        display.close()


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"
