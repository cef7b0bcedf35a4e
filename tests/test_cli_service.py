"""``procsup run`` as a service: its jobs' output attributed on stderr, and
its pool's metrics served for the run (``--metrics``)."""

from __future__ import annotations

import re
import select
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from test_cli import _env, procsup_cmd, project, records, run_cli, survivors, write_input

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


def _readline(stream: object, deadline: float) -> bytes:
    remaining = deadline - time.monotonic()
    readable, _, _ = select.select([stream], [], [], max(remaining, 0))
    assert readable, "nothing within the deadline"
    return stream.readline()  # type: ignore[attr-defined,no-any-return]


def test_metrics_are_served_for_the_run(project: Path) -> None:
    path = write_input(project, ["1", "2", "3", '"hang"'])
    proc = subprocess.Popen(
        procsup_cmd(
            "run", "clijobs:work", "-i", path, "--concurrency", "2", "--metrics", "127.0.0.1:0"
        ),
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    try:
        deadline = time.monotonic() + 30
        while not (line := _readline(proc.stderr, deadline)).startswith(b"procsup run: metrics"):
            pass
        url = line.decode().split(" at ")[1].strip()
        assert url.startswith("http://127.0.0.1:")
        written = [_readline(proc.stdout, deadline) for _ in range(3)]
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
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err.decode()
    assert f"workers started: {int(starts)}" in err.decode()
    assert survivors(project.name) == []
