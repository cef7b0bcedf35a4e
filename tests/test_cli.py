"""The ``procsup`` command, driven end to end in a subprocess, as a user would.

Every test runs the command in its own directory whose name holds a unique
marker; workers inherit it as their working directory, so "nothing left
running" is checked by finding no process whose command line or working
directory contains the marker.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from procsup import __version__
from procsup._cli import count_records
from procsup._cli_common import error_fields

REPO = Path(__file__).resolve().parent.parent

JOBS_MODULE = textwrap.dedent(
    """
    import os
    import signal
    import time

    import procsup

    CONSTANT = 3


    def work(x):
        if x == "crash":
            os._exit(3)
        if x == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if x == "hang":
            time.sleep(600)
        if x == "nap":
            open(f"nap-{os.getpid()}", "w").close()
            time.sleep(1.0)
            return "rested"
        if x == "boom":
            raise ValueError("boom")
        if x == "chatty":
            print("chatter from the job", flush=True)
            return "said it"
        return x * 2


    def not_json(x):
        return {"set": {1}, "bytes": b"x", "nan": float("nan")}.get(x, x)


    def tagged(x):
        return [x, procsup.worker_state()]


    def set_tag():
        return "warm"


    def mark_started():
        open("worker-started", "w").close()


    def broken_init():
        raise RuntimeError("the model file is missing")
    """
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project directory with a jobs module, named after a unique marker."""
    path = tmp_path / f"procsup-cli-{uuid.uuid4().hex}"
    path.mkdir()
    (path / "clijobs.py").write_text(JOBS_MODULE)
    return path


def _env() -> dict[str, str]:
    # Only the repository is on PYTHONPATH: clijobs imports because the
    # command makes its working directory importable.
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def procsup_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "procsup", *args]


def run_cli(
    project: Path, *args: str, stdin: str = "", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        procsup_cmd(*args),
        cwd=project,
        input=stdin,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=timeout,
        check=False,
    )


@contextmanager
def started_cli(project: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """``procsup ARGS`` running in ``project``, its output piped; on the way
    out it is killed if it still runs, reaped, and its pipes are closed."""
    with subprocess.Popen(
        procsup_cmd(*args),
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    ) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()


def write_input(project: Path, lines: list[str]) -> str:
    path = project / "in.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def survivors(marker: str) -> list[str]:
    """Command lines of live processes (zombies aside) that mention ``marker``
    in their command line or working directory (a worker's command line is
    its name, ``procsup worker ...``)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status", "cwd"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        where = f"{cmdline} {proc.info['cwd'] or ''}"
        if marker in where and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(f"{proc.pid}: {cmdline[:150]}")
    return found


def records(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_run_writes_one_record_per_input_in_input_order(project: Path) -> None:
    inputs = ["1", "2", "{not json", '"crash"', "3", '"hang"', "4", '"boom"', '"kill"', "5"]
    path = write_input(project, inputs)

    done = run_cli(
        project, "run", "clijobs:work", "-i", path, "--timeout", "3", "--concurrency", "2"
    )

    assert done.returncode == 1, done.stderr
    out = records(done.stdout)
    assert [r["index"] for r in out] == list(range(len(inputs)))
    assert [r.get("result") for r in out] == [2, 4, None, None, 6, None, 8, None, None, 10]
    errors = {r["index"]: r["error"] for r in out if "error" in r}
    assert errors[2]["type"] == "JSONDecodeError"
    assert errors[2]["phase"] == "input"
    assert errors[3] == {
        "type": "WorkerCrashedError",
        "message": errors[3]["message"],
        "phase": "job",
        "exit_code": 3,
        "signal": None,
    }
    assert errors[5]["type"] == "TimeoutError"
    assert errors[5]["phase"] == "job"
    assert errors[7] == {
        "type": "ValueError",
        "message": "boom",
        "phase": None,
        "exit_code": None,
        "signal": None,
    }
    assert errors[8]["type"] == "WorkerCrashedError"
    assert (errors[8]["signal"], errors[8]["exit_code"]) == ("SIGKILL", None)
    assert "5 failed" in done.stderr
    assert "TimeoutError 1" in done.stderr
    assert survivors(project.name) == []


def test_a_result_that_is_not_json_is_an_error_record_and_a_failed_run(project: Path) -> None:
    """Issue 10 item 10: a set, bytes or NaN cannot be written as JSON: an
    error record, counted as a failure, and a non-zero exit."""
    done = run_cli(project, "run", "clijobs:not_json", stdin='"set"\n"bytes"\n"nan"\n1\n')

    assert done.returncode == 1, done.stderr
    out = records(done.stdout)
    assert [r.get("result") for r in out] == [None, None, None, 1]
    assert [r["error"]["phase"] for r in out[:3]] == ["output"] * 3
    assert "1 ok, 3 failed" in done.stderr


def test_run_all_ok_from_stdin_to_a_file(project: Path) -> None:
    out_path = project / "out.jsonl"
    done = run_cli(
        project,
        "run",
        "clijobs:tagged",
        "--init",
        "clijobs:set_tag",
        "-o",
        str(out_path),
        stdin="1\n\n[2, 3]\n",  # a blank line is not an input
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert records(out_path.read_text()) == [
        {"index": 0, "result": [1, "warm"]},
        {"index": 1, "result": [[2, 3], "warm"]},
    ]
    assert "2 ok, 0 failed" in done.stderr


def test_run_imports_from_the_working_directory_like_the_console_script(
    project: Path, tmp_path: Path
) -> None:
    """The installed ``procsup`` script is not ``python -m``: the working
    directory is not on ``sys.path`` unless the command puts it there."""
    entry = tmp_path / "bin" / "procsup_entry.py"
    entry.parent.mkdir()
    entry.write_text("import sys\nfrom procsup._cli import main\nsys.exit(main())\n")
    done = subprocess.run(
        [sys.executable, str(entry), "run", "clijobs:work"],
        cwd=project,
        input="21\n",
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert records(done.stdout) == [{"index": 0, "result": 42}]


def test_what_a_job_prints_goes_to_stderr_not_among_the_records(project: Path) -> None:
    done = run_cli(project, "run", "clijobs:work", stdin='"chatty"\n1\n')

    assert done.returncode == 0, done.stderr
    assert records(done.stdout) == [{"index": 0, "result": "said it"}, {"index": 1, "result": 2}]
    assert "chatter from the job" in done.stderr


@pytest.mark.parametrize(
    ("func", "init", "complaint"),
    [
        ("nosuchmodule:f", "clijobs:mark_started", "No module named 'nosuchmodule'"),
        ("clijobs:missing", "clijobs:mark_started", "has no 'missing'"),
        ("clijobs:CONSTANT", "clijobs:mark_started", "is not callable"),
        ("clijobs", "clijobs:mark_started", "must look like MODULE:FUNC"),
        ("clijobs:work", "clijobs:nothing_here", "--init 'clijobs:nothing_here'"),
    ],
)
def test_usage_errors_exit_2_before_any_worker_starts(
    project: Path, func: str, init: str, complaint: str
) -> None:
    done = run_cli(project, "run", func, "--init", init, stdin="1\n")

    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("procsup run: error:")
    assert complaint in lines[0]
    assert not (project / "worker-started").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["run", "clijobs:work", "--concurrency", "0"],
        ["run", "clijobs:work", "--timeout", "soon"],
        ["run", "clijobs:work", "--idle", "5", "--concurrency", "2"],
        ["run", "clijobs:work", "-i", "no-such-file.jsonl"],
        ["run", "--init", "clijobs:mark_started"],
        ["--init", "clijobs:mark_started"],
    ],
)
def test_bad_command_lines_exit_2(project: Path, args: list[str]) -> None:
    if "--init" not in args:
        args = [*args, "--init", "clijobs:mark_started"]
    done = run_cli(project, *args, stdin="1\n")

    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert not (project / "worker-started").exists()


def test_a_broken_initializer_is_reported_with_its_traceback(project: Path) -> None:
    done = run_cli(project, "run", "clijobs:work", "--init", "clijobs:broken_init", stdin="1\n")

    assert done.returncode == 1
    assert done.stdout == ""
    assert "no worker could start" in done.stderr
    assert "the model file is missing" in done.stderr
    assert 'clijobs.py", line' in done.stderr  # the worker's traceback
    assert survivors(project.name) == []


def test_version_and_help(project: Path) -> None:
    version = run_cli(project, "--version")
    assert (version.returncode, version.stdout.strip()) == (0, f"procsup {__version__}")
    for args in (["--help"], ["run", "--help"], ["demo", "--help"]):
        shown = run_cli(project, *args)
        assert shown.returncode == 0, args
        assert "Example" in shown.stdout, args
        assert "usage: procsup" in shown.stdout, args


def test_ctrl_c_stops_running_jobs_keeps_written_lines_and_leaves_nothing(project: Path) -> None:
    path = write_input(project, ["1", '"hang"', '"hang"', '"hang"'])
    with started_cli(project, "run", "clijobs:work", "-i", path, "--concurrency", "2") as proc:
        assert proc.stdout is not None
        readable, _, _ = select.select([proc.stdout], [], [], 30)
        assert readable, "no output line within 30 s"
        first = proc.stdout.readline()
        assert survivors(project.name), "the workers should be running now"
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=30)

    assert proc.returncode == 130, err.decode()
    assert records((first + rest).decode()) == [{"index": 0, "result": 2}]
    assert b"interrupted by SIGINT" in err
    assert survivors(project.name) == []


def test_sigterm_drains_finished_records_are_written_and_it_exits_143(project: Path) -> None:
    path = write_input(project, ['"nap"', '"hang"', *["1"] * 20])
    with started_cli(
        project, "run", "clijobs:work", "-i", path, "--concurrency", "2", "--drain-timeout", "3"
    ) as proc:
        deadline = time.monotonic() + 30
        while not list(project.glob("nap-*")):  # the nap runs (and the hang beside it)
            assert time.monotonic() < deadline, "the job did not start within 30 s"
            time.sleep(0.02)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - signalled

    assert proc.returncode == 143, err.decode()
    got = records(out.decode())
    assert got[0] == {"index": 0, "result": "rested"}  # a running job finished
    assert got[1]["index"] == 1  # the hang, stopped after --drain-timeout
    assert got[1]["error"]["type"] == "WorkerClosedError"
    assert len(got) == 2  # nothing new started
    assert 3 <= took < 10
    assert b"interrupted by SIGTERM: 2 records written, drained" in err
    assert survivors(project.name) == []


def test_demo_runs_and_every_outcome_is_the_expected_one(tmp_path: Path) -> None:
    done = subprocess.run(
        procsup_cmd("demo"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    summary = done.stdout[done.stdout.index("\nsummary") :]
    for expected in (
        "jobs ok",
        "33 (expected 33)",
        "failed: worker crashed",
        "failed: hung, stopped at",
        "failed: over memory_limit_mb=",
        "warm-ups failed during the outage",
        "degraded, then ok",
        "latency p50 / p99",
        "workers started",
        "every outcome was the expected one",
    ):
        assert expected in summary, expected
    assert "UNEXPECTED" not in done.stdout
    left = [line for line in summary.splitlines() if "no process left behind" in line]
    assert len(left) == 1
    assert "yes (psutil: no child process remains)" in left[0]


def test_count_records_counts_non_blank_lines_without_moving_the_offset(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'1\n\n  \n{"a": 2}\n3')
    fd = os.open(path, os.O_RDONLY)
    try:
        assert count_records(fd) == 3
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0
    finally:
        os.close(fd)


def test_error_fields_take_phase_and_exit_from_worker_errors() -> None:
    from procsup import WorkerCrashedError

    err = WorkerCrashedError("worker died during a job", pid=1, phase="job", returncode=-9)
    assert error_fields(err) == {
        "type": "WorkerCrashedError",
        "message": str(err),
        "phase": "job",
        "exit_code": None,
        "signal": "SIGKILL",
    }
    assert error_fields(KeyError("k"))["phase"] is None
