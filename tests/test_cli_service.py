"""``procsup run`` as a service: its jobs' output attributed on stderr, and
its pool's metrics served for the run (``--metrics``)."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import IO

from prometheus_client.parser import text_string_to_metric_families
from test_cli import project, records, run_cli, started_cli, survivors, write_input

__all__ = ["project"]  # the fixture, shared with test_cli


def test_what_a_job_prints_is_attributed_to_its_worker(project: Path) -> None:
    done = run_cli(project, "run", "clijobs:work", stdin='"chatty"\n1\n')

    assert done.returncode == 0, done.stderr
    assert records(done.stdout) == [{"index": 0, "result": "said it"}, {"index": 1, "result": 2}]
    assert re.search(r"^\[worker pid=\d+\] chatter from the job$", done.stderr, re.M), done.stderr


def test_a_bad_metrics_address_is_a_usage_error(project: Path) -> None:
    done = run_cli(project, "run", "clijobs:work", "--metrics", "nowhere", stdin="1\n")

    assert done.returncode == 2
    assert "--metrics 'nowhere': expected HOST:PORT" in done.stderr


class _Lines:
    """Lines of a child's pipe, each within a deadline. It reads the file
    descriptor itself: a buffered ``readline`` takes in every line already
    written, so a ``select`` for the next one waits on an empty pipe."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._fd = stream.fileno()
        self._held = b""  # read, not yet returned

    def readline(self, deadline: float) -> bytes:
        while b"\n" not in self._held:
            readable, _, _ = select.select([self._fd], [], [], max(deadline - time.monotonic(), 0))
            assert readable, f"nothing within the deadline (after {self._held!r})"
            chunk = os.read(self._fd, 65536)
            assert chunk, f"the pipe closed (after {self._held!r})"
            self._held += chunk
        line, _, self._held = self._held.partition(b"\n")
        return line + b"\n"


def test_metrics_are_served_for_the_run(project: Path) -> None:
    path = write_input(project, ["1", "2", "3", '"hang"'])
    with started_cli(
        project, "run", "clijobs:work", "-i", path, "--concurrency", "2", "--metrics", "127.0.0.1:0"
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stderr is not None
            out, err = _Lines(proc.stdout), _Lines(proc.stderr)
            deadline = time.monotonic() + 30
            while not (line := err.readline(deadline)).startswith(b"procsup run: metrics"):
                pass
            url = line.decode().split(" at ")[1].strip()
            assert url.startswith("http://127.0.0.1:")
            written = [out.readline(deadline) for _ in range(3)]
            assert records(b"".join(written).decode()) == [
                {"index": i, "result": 2 * (i + 1)} for i in range(3)
            ]
            with urllib.request.urlopen(url, timeout=10) as response:
                text = response.read().decode()
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }
            run = (("pool", "run"),)
            assert samples[("procsup_jobs_total", (("outcome", "ok"), *run))] == 3
            assert samples[("procsup_workers", (*run, ("state", "busy")))] == 1  # the hanging job
            starts = samples[("procsup_worker_starts_total", run)]
        finally:
            # Failed or not, the run stops (SIGINT: it reaps its workers);
            # started_cli kills it if it does not, reaps it and closes its pipes.
            proc.send_signal(signal.SIGINT)
            try:
                _, rest = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, rest = proc.communicate()
    report = rest.decode()
    assert proc.returncode == 130, report
    assert f"workers started: {int(starts)}" in report
    assert survivors(project.name) == []
