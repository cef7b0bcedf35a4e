"""A pool learns its jobs' modules: workers started after a job ran import
its module while warming, before they are ready, and a fork server's template
imports it once for every worker it forks (``learn_modules=True``)."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import learn_jobs
import learn_jobs_arg
import learn_jobs_bad
import learn_jobs_other
import learn_jobs_pid
import learn_jobs_signal
import learn_jobs_slow
import learn_jobs_socket
import learn_jobs_thread
import learn_jobs_trio
import pytest
import trio
from support import child_env, templates

import procsup
from procsup._learn import LearnedModules, pickled_modules

ONE_SHOT = {"idle": 2, "max_jobs": 1, "learn_modules": True}


async def _imported_later(pool: procsup.Pool, name: str) -> list[bool]:
    """Whether each of the next four fresh workers had imported ``name``
    before its job arrived."""
    return [await pool.run(learn_jobs.imported, name) for _ in range(4)]


async def test_new_workers_import_the_modules_of_jobs_already_run(start_method: str) -> None:
    async with procsup.open_pool(start_method=start_method, **ONE_SHOT) as pool:
        assert not await pool.run(learn_jobs.imported, "learn_jobs_other")
        assert await pool.run(learn_jobs_other.touch) == "other"
        seen = await _imported_later(pool, "learn_jobs_other")
    # the workers warm before the module was learned do not have it; later ones do
    assert seen[-2:] == [True, True]


async def test_learn_modules_false_imports_nothing_ahead() -> None:
    async with procsup.open_pool(**{**ONE_SHOT, "learn_modules": False}) as pool:
        await pool.run(learn_jobs_other.touch)
        assert await _imported_later(pool, "learn_jobs_other") == [False] * 4


async def test_a_module_that_fails_in_workers_is_dropped_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with procsup.open_pool(**ONE_SHOT) as pool:
        with pytest.raises(Exception, match="refuses"):
            await pool.run(learn_jobs_bad.touch)
        for _ in range(6):  # fresh workers, some warmed after the module was learned
            assert await pool.run(learn_jobs.touch) == "touched"
    warnings = [r for r in caplog.records if "learn_jobs_bad" in r.getMessage()]
    assert len(warnings) == 1
    assert "could not import job module" in warnings[0].getMessage()


async def _imported_by_later(pool: procsup.Pool, name: str) -> list[int | None]:
    """The pid that imported ``name`` in each of the next four fresh workers,
    with the worker's own pid: (imported_by, pid) pairs."""
    return [await pool.run(learn_jobs.imported_by, name) for _ in range(4)]


async def test_forked_workers_share_the_template_import(start_method: str) -> None:
    async with procsup.open_pool(start_method=start_method, **ONE_SHOT) as pool:
        assert await pool.run(learn_jobs.imported_by, "learn_jobs_pid") is None
        assert await pool.run(learn_jobs_pid.touch) == "pid"
        later = await _imported_by_later(pool, "learn_jobs_pid")
        pids = [await pool.run(os.getpid) for _ in range(2)]
        if start_method == "forkserver":
            # imported once, by the template the later workers were forked from
            assert later[-2:] == [templates()[0].pid] * 2
        else:  # imported by each worker, while warming
            assert None not in later[-2:]
            assert len(set(later[-2:])) == 2
        assert os.getpid() not in later
        assert not set(later) & set(pids)


async def test_the_modules_of_a_jobs_arguments_are_learned(start_method: str) -> None:
    async with procsup.open_pool(start_method=start_method, **ONE_SHOT) as pool:
        assert await pool.run(learn_jobs.x_of, learn_jobs_arg.Point(3)) == 3
        later = await _imported_by_later(pool, "learn_jobs_arg")
    assert None not in later[-2:]


def test_pickled_modules_names_globals_of_every_protocol() -> None:
    import fractions
    import pickle

    job = (learn_jobs.x_of, (learn_jobs_arg.Point(1), fractions.Fraction(1, 3), learn_jobs.x_of))
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        names = list(pickled_modules(pickle.dumps(job, protocol)))
        assert {"learn_jobs", "learn_jobs_arg", "fractions"} <= set(names), protocol
    assert list(pickled_modules(b"garbage")) == []


def test_later_jobs_of_a_function_are_not_looked_at_again() -> None:
    learned = LearnedModules()
    learned.note(learn_jobs.touch, None)
    learned.note(learn_jobs.x_of, None)
    version = learned.version
    learned.note(learn_jobs.x_of, b"not looked at")
    assert learned.version == version
    assert learned.field(10.0).split("\n") == ["3333", "learn_jobs"]


@pytest.mark.parametrize(("importable", "learned"), [(True, ["__mp_main__"]), (False, [])])
def test_main_jobs_are_learned_only_when_main_has_a_file(
    importable: bool, learned: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job of ``python script.py`` is learned as the script (``__mp_main__``);
    one of ``python -c``, a REPL or stdin has no file for a worker to import."""
    monkeypatch.setattr("procsup._learn.main_importable", lambda: importable)

    def job() -> None:
        pass

    job.__module__ = "__main__"
    modules = LearnedModules()
    modules.note(job, None)
    assert modules.for_template() == learned


@pytest.mark.parametrize(
    ("module", "why"),
    [
        (learn_jobs_thread, "it starts 1 thread(s)"),
        (learn_jobs_socket, "it leaves 2 descriptor(s) open"),
        (learn_jobs_signal, "it sets signal handlers"),
    ],
)
async def test_a_module_that_misbehaves_in_the_template_is_left_to_workers(
    module: ModuleType, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    name = module.__name__
    async with procsup.open_pool(start_method="forkserver", **ONE_SHOT) as pool:
        await pool.wait_warm()
        template = templates()[0].pid
        assert await pool.run(module.touch) == name.rpartition("_")[2]
        later = await _imported_by_later(pool, name)
        assert await pool.run(module.touch) == name.rpartition("_")[2]
        assert templates()[0].num_threads() == 1  # the template's contract
    # each later worker imported it itself, while warming; the template never did
    assert None not in later[-2:]
    assert template not in later
    warnings = [r.getMessage() for r in caplog.records if name in r.getMessage()]
    assert len(warnings) == 1
    assert f"did not import job module {name!r}: {why}" in warnings[0]
    assert "each worker imports it while warming" in warnings[0]


async def test_a_module_that_fails_in_the_template_is_dropped_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with procsup.open_pool(start_method="forkserver", **ONE_SHOT) as pool:
        with pytest.raises(Exception, match="refuses"):
            await pool.run(learn_jobs_bad.touch)
        for _ in range(6):
            assert await pool.run(learn_jobs.touch) == "touched"
    warnings = [r.getMessage() for r in caplog.records if "learn_jobs_bad" in r.getMessage()]
    assert len(warnings) == 1
    assert "could not import job module 'learn_jobs_bad'" in warnings[0]
    assert "refuses" in warnings[0]


async def test_a_module_slower_than_the_bound_is_dropped_and_starts_still_work(
    start_method: str, caplog: pytest.LogCaptureFixture
) -> None:
    # init_timeout=1.5: a learned import may take 0.5 s; this one takes 2 s
    options = {**ONE_SHOT, "init_timeout": 1.5}
    async with procsup.open_pool(start_method=start_method, **options) as pool:
        assert await pool.run(learn_jobs_slow.touch) == "slow"  # imported on the job's path
        for _ in range(4):
            assert await pool.run(learn_jobs.touch) == "touched"
        assert await pool.run(learn_jobs.imported_by, "learn_jobs_slow") is None
        assert pool.statistics().start_failures == 0
    warnings = [r.getMessage() for r in caplog.records if "learn_jobs_slow" in r.getMessage()]
    assert len(warnings) == 1
    assert "could not import job module" in warnings[0]


async def test_modules_that_import_trio_and_numpy() -> None:
    pytest.importorskip("numpy")
    learn_jobs_heavy = pytest.importorskip("learn_jobs_heavy")  # it imports numpy
    async with procsup.open_pool(start_method="forkserver", **ONE_SHOT) as pool:
        await pool.wait_warm()
        template = templates()[0].pid
        assert await pool.run(learn_jobs_trio.touch) == "trio"
        assert await pool.run(learn_jobs_heavy.touch) == "trio numpy"
        trio_by = await _imported_by_later(pool, "learn_jobs_trio")
        assert await pool.run(learn_jobs_heavy.touch) == "trio numpy"
        assert templates()[0].num_threads() == 1  # the template's contract
    # trio starts no thread when imported: the template has it; numpy's BLAS
    # may, and then each worker imports it while warming
    assert trio_by[-2:] == [template] * 2


_MAIN_SCRIPT = """
import json, os, sys

import learn_jobs
import trio

import procsup

IMPORTED_BY = os.getpid()


def job():
    return "main job"


async def main(start_method):
    async with procsup.open_pool(idle=2, max_jobs=1, start_method=start_method) as pool:
        first = await pool.run(learn_jobs.imported_by, "__mp_main__")
        assert await pool.run(job) == "main job"
        later = [await pool.run(learn_jobs.imported_by, "__mp_main__") for _ in range(4)]
        worker = await pool.run(os.getpid)
    print(json.dumps({"first": first, "later": later, "worker": worker, "parent": os.getpid()}))


if __name__ == "__main__":
    print("guarded block", os.getpid(), flush=True)
    trio.run(main, sys.argv[1])
"""


async def test_jobs_of_the_main_script_are_learned(start_method: str, tmp_path: Path) -> None:
    script = tmp_path / "main_script.py"
    script.write_text(textwrap.dedent(_MAIN_SCRIPT))
    done = await trio.run_process(
        [sys.executable, str(script), start_method],
        capture_stdout=True,
        capture_stderr=True,
        env=child_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    guarded, report = done.stdout.decode().strip().splitlines()
    seen = json.loads(report)
    assert guarded == f"guarded block {seen['parent']}"  # once, in the parent only
    assert seen["first"] is None
    later = seen["later"][-2:]
    assert None not in later
    assert seen["parent"] not in later
    if start_method == "forkserver":  # the template imported it, once
        assert later[0] == later[1] != seen["worker"]
    else:
        assert later[0] != later[1]
