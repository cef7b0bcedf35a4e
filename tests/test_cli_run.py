"""``procsup run``'s settings flags, --unpack, --unordered, --resume and the
concurrency warning, end to end in a subprocess (helpers of test_cli)."""

from __future__ import annotations

import json
import signal
import textwrap
import time
from pathlib import Path

import attrs
import pytest
from test_cli import (
    project,
    records,
    run_cli,
    started_cli,
    survivors,
    write_input,
)

import procsup
from procsup._cli import build_parser
from procsup._cli_common import SETTING_DESTS
from procsup._options import PoolOptions, WorkerOptions

__all__ = ["project"]  # the fixture, shared with test_cli

MORE_JOBS = textwrap.dedent(
    """
    import os
    import time


    def add(a, b=0, *, c=0):
        return a + b + c


    def nap(seconds):
        time.sleep(seconds)
        return seconds


    def slow_once(x):
        # the first time it sees 3, it hangs (until the run is interrupted)
        if x == 3 and not os.path.exists("hung-once"):
            open("hung-once", "w").close()
            time.sleep(600)
        return x * 10


    def slow_init():
        time.sleep(2)
    """
)

# open_pool options that `procsup run` has no settings flag for, and why:
# the flags of their own, the callables, and what a shell gives otherwise.
NOT_SETTINGS = {
    "initializer": "--init",
    "idle": "--idle",
    "max_workers": "--concurrency",
    "max_jobs": "--max-jobs-per-worker",
    "memory_limit_mb": "--memory-limit-mb",
    "worker_loop": "--worker-loop",
    "load": "a callable",
    "on_event": "a callable",
    "load_interval": "only used with load",
    "env": "the workers inherit the command's environment",
    "capture_output": "the workers' output goes to stderr already",
    "learn_modules": "on by default; a run has one FUNC, whose module is learned at its first job",
}


@pytest.fixture
def jobs(project: Path) -> Path:
    (project / "morejobs.py").write_text(MORE_JOBS)
    return project


def test_every_option_has_a_flag_or_a_reason() -> None:
    options = {f.name for cls in (WorkerOptions, PoolOptions) for f in attrs.fields(cls) if f.init}
    assert options == set(SETTING_DESTS) | set(NOT_SETTINGS)
    assert not set(SETTING_DESTS) & set(NOT_SETTINGS)


def test_the_settings_flags_reach_the_pool_options() -> None:
    args = build_parser().parse_args(
        [
            *("run", "m:f", "--init-timeout", "30", "--preload", "json,decimal"),
            *("--start-method", "exec", "--memory-warn-mb", "500", "--shutdown-timeout", "0"),
            *("--cancel-grace", "0.5", "--max-attempts", "1", "--name", "scorer"),
        ]
    )
    given = {name: getattr(args, name) for name in SETTING_DESTS if getattr(args, name) is not None}
    assert given == {
        "init_timeout": 30.0,
        "preload": ("json", "decimal"),
        "start_method": "exec",
        "memory_warn_mb": 500.0,
        "shutdown_timeout": 0.0,
        "cancel_grace": 0.5,
        "max_acquire_attempts": 1,
        "name": "scorer",
    }


def test_init_timeout_is_a_flag(jobs: Path) -> None:
    path = write_input(jobs, ["1"])
    common = (
        "run",
        "morejobs:add",
        "--init",
        "morejobs:slow_init",
        "-i",
        path,
        "--concurrency",
        "1",
    )
    short = run_cli(jobs, *common, "--init-timeout", "0.3", "--max-attempts", "1")
    assert short.returncode == 1, short.stderr
    assert "no worker could start" in short.stderr
    assert "init_timeout=0.3" in short.stderr
    enough = run_cli(jobs, *common, "--init-timeout", "20", "--start-method", "exec")
    assert enough.returncode == 0, enough.stderr
    assert records(enough.stdout) == [{"index": 0, "result": 1}]


@pytest.mark.parametrize(
    "args",
    [
        ["--cancel-grace", "-1"],
        ["--start-method", "spawn"],
        ["--ping-interval", "0"],
        ["--load-threshold", "1.5"],
        ["--resume"],  # without -o FILE
    ],
)
def test_bad_settings_exit_2_before_any_worker_starts(jobs: Path, args: list[str]) -> None:
    done = run_cli(jobs, "run", "morejobs:add", *args, stdin="1\n")
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""


def test_unpack_passes_arrays_as_positional_and_objects_as_keyword_arguments(
    jobs: Path,
) -> None:
    lines = ["[1, 2]", '{"a": 1, "c": 5}', "7", '{"a": 1, "nope": 2}']
    done = run_cli(jobs, "run", "morejobs:add", "--unpack", stdin="\n".join(lines) + "\n")
    got = records(done.stdout)
    assert got[:3] == [
        {"index": 0, "result": 3},
        {"index": 1, "result": 6},
        {"index": 2, "result": 7},
    ]
    assert got[3]["error"]["type"] == "TypeError"  # add() got an unexpected keyword
    assert done.returncode == 1


def test_unordered_writes_records_as_jobs_finish(jobs: Path) -> None:
    lines = ["1.5", "0", "0", "0"]
    done = run_cli(
        jobs, "run", "morejobs:nap", "--unordered", "--concurrency", "2", stdin="\n".join(lines)
    )
    assert done.returncode == 0, done.stderr
    got = records(done.stdout)
    assert sorted(r["index"] for r in got) == [0, 1, 2, 3]
    assert got[-1] == {"index": 0, "result": 1.5}  # the slow first input came last


def test_resume_after_an_interrupted_run_gives_one_record_per_input(jobs: Path) -> None:
    inputs = [str(i) for i in range(8)]
    path = write_input(jobs, inputs)
    out = jobs / "out.jsonl"
    with started_cli(
        jobs, "run", "morejobs:slow_once", "-i", path, "-o", str(out), "--unordered"
    ) as first:
        deadline = time.monotonic() + 60
        # every input but 3 (which hangs) is written; then interrupt the run
        while not (out.exists() and len(out.read_text().splitlines()) == 7):
            assert time.monotonic() < deadline, "the first run did not write 7 records"
            assert first.poll() is None
            time.sleep(0.05)
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=30)
    assert first.returncode == 130, err.decode()
    with out.open("a") as f:
        f.write('{"index": 3, "resu')  # a record cut short by the interruption

    again = run_cli(jobs, "run", "morejobs:slow_once", "-i", path, "-o", str(out), "--resume")
    assert again.returncode == 0, again.stderr
    assert "7 inputs already had a record" in again.stderr
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["index"] for r in got) == list(range(8))  # each input exactly once
    assert {r["index"]: r["result"] for r in got} == {i: i * 10 for i in range(8)}
    assert survivors(jobs.name) == []


def test_resume_refuses_a_file_that_is_not_records(jobs: Path) -> None:
    out = jobs / "out.jsonl"
    out.write_text("hello\n")
    done = run_cli(jobs, "run", "morejobs:add", "-o", str(out), "--resume", stdin="1\n")
    assert done.returncode == 2
    assert "line 1 is not a procsup run record" in done.stderr
    assert out.read_text() == "hello\n"  # untouched


def test_a_concurrency_far_above_the_cpus_warns_once(jobs: Path) -> None:
    too_many = 4 * procsup.available_cpus() + 1
    done = run_cli(
        jobs, "run", "morejobs:add", "--concurrency", str(too_many), "--idle", "0", stdin="1\n2\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("is far above") == 1
    quiet = run_cli(jobs, "run", "morejobs:add", "--concurrency", "1", stdin="1\n")
    assert "far above" not in quiet.stderr
