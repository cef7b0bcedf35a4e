"""A worker's environment, slot and name: ``env=``, ``procsup.worker_slot()``
and what ``ps`` and ``top`` show, under both start methods."""

from __future__ import annotations

import itertools
import os
import sys

import psutil
import pytest
import service_jobs as jobs
import trio

import procsup

GPU = "PROCSUP_TEST_GPU"


async def test_env_is_set_before_the_initializer_runs(start_method: str) -> None:
    async with procsup.open_pool(
        jobs.getenv_init, idle=1, start_method=start_method, env={GPU: "gpu7"}
    ) as pool:
        assert await pool.run(jobs.getenv, GPU) == "gpu7"
        assert await pool.run(procsup_state) == "gpu7"  # what the initializer saw


def procsup_state() -> object:
    return procsup.worker_state()


async def test_env_none_removes_a_variable(
    start_method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROCSUP_TEST_DROP", "parent's")
    async with procsup.open_pool(
        idle=1, start_method=start_method, env={"PROCSUP_TEST_DROP": None}
    ) as pool:
        assert await pool.run(jobs.getenv, "PROCSUP_TEST_DROP") is None
    assert os.environ["PROCSUP_TEST_DROP"] == "parent's"


async def test_env_callable_gets_each_worker_its_slot(start_method: str) -> None:
    async with procsup.open_pool(
        jobs.getenv_init, idle=2, max_workers=2, start_method=start_method, env=jobs.slot_env
    ) as pool:
        results: list[tuple[int, str | None, int]] = []

        async def one() -> None:
            results.append(await pool.run(jobs.slot_and_env, GPU, 0.3))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one)
            nursery.start_soon(one)
    assert sorted((slot, env) for slot, env, _ in results) == [(0, "gpu0"), (1, "gpu1")]


async def test_a_parent_environment_change_reaches_the_next_worker(
    start_method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROCSUP_TEST_LATER", raising=False)
    monkeypatch.setenv("PROCSUP_TEST_GONE", "before")
    # idle=0, one job per worker: each job's worker starts when it is asked for
    async with procsup.open_pool(idle=0, start_method=start_method) as pool:
        assert await pool.run(jobs.getenv, "PROCSUP_TEST_LATER") is None
        monkeypatch.setenv("PROCSUP_TEST_LATER", "after")
        monkeypatch.delenv("PROCSUP_TEST_GONE")
        assert await pool.run(jobs.getenv, "PROCSUP_TEST_LATER") == "after"
        assert await pool.run(jobs.getenv, "PROCSUP_TEST_GONE") is None
        monkeypatch.setenv("PROCSUP_TEST_LATER", "again")
        assert await pool.run(jobs.getenv, "PROCSUP_TEST_LATER") == "again"


async def test_slots_stay_below_max_workers_and_are_reused(start_method: str) -> None:
    seen: list[tuple[int, str | None, int]] = []
    async with procsup.open_pool(
        idle=2, max_workers=3, start_method=start_method, env=jobs.slot_env
    ) as pool:

        async def worker_loop(count: int) -> None:
            for _ in range(count):
                seen.append(await pool.run(jobs.slot_and_env, GPU))

        async with trio.open_nursery() as nursery:
            for count in (17, 17, 16):
                nursery.start_soon(worker_loop, count)
    assert len(seen) == 50
    assert len({pid for _, _, pid in seen}) == 50  # one-shot: every job a new process
    assert {slot for slot, _, _ in seen} <= {0, 1, 2}
    assert all(env == f"gpu{slot}" for slot, env, _ in seen)


async def test_a_single_worker_has_slot_zero() -> None:
    async with procsup.open_worker(env=jobs.slot_env) as worker:
        assert (await worker.run(jobs.slot_and_env, GPU))[:2] == (0, "gpu0")
    assert worker.slot == 0


def test_worker_slot_outside_a_worker_says_so() -> None:
    with pytest.raises(RuntimeError, match="only available inside a worker"):
        procsup.worker_slot()


@pytest.mark.parametrize(
    ("env", "error", "match"),
    [
        (["A=1"], TypeError, "must be a mapping"),
        ({"A=B": "1"}, ValueError, "not an environment variable name"),
        ({"": "1"}, ValueError, "not an environment variable name"),
        ({"A": 1}, TypeError, r"env\['A'\] must be a string"),
        ({"A": "x\0y"}, TypeError, "without NUL"),
    ],
)
async def test_a_bad_env_is_refused_before_anything_starts(
    env: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        async with procsup.open_pool(env=env):
            pass


@pytest.mark.parametrize(
    ("env", "match"),
    [
        (jobs.failing_env, r"env callable failed for slot 0: LookupError\('no GPU for slot 0'\)"),
        (jobs.not_a_mapping_env, r"env\(0\) must be a mapping"),
    ],
)
async def test_an_env_callable_that_fails_is_a_start_failure(env: object, match: str) -> None:
    async with procsup.open_pool(idle=0, env=env, max_acquire_attempts=1) as pool:
        with pytest.raises(procsup.NoWorkerAvailableError, match=match) as info:
            await pool.run(jobs.getenv, GPU)
        assert isinstance(info.value.start_errors[0], procsup.WorkerStartError)
        assert pool.statistics().start_failures >= 1
        assert pool.statistics().starts == 0  # no process was started for it


async def test_workers_name_themselves_for_ps_and_top(start_method: str) -> None:
    async with procsup.open_pool(
        idle=2, max_workers=2, max_jobs=None, start_method=start_method, name="asr"
    ) as pool:
        await pool.wait_warm()
        async with pool.acquire() as first, pool.acquire() as second:
            names = {await w.run(jobs.process_names) for w in (first, second)}
            args = {" ".join(psutil.Process(w.pid).cmdline()) for w in (first, second)}
            comms = {psutil.Process(w.pid).name() for w in (first, second)}
    assert names == {
        ("procsup/0 asr", f"{sys.executable} procsup worker asr slot=0"),
        ("procsup/1 asr", f"{sys.executable} procsup worker asr slot=1"),
    }
    assert args == {f"{sys.executable} procsup worker asr slot={n}" for n in (0, 1)}
    assert comms == {"procsup/0 asr", "procsup/1 asr"}


async def test_the_default_name_is_the_initializers(start_method: str) -> None:
    async with procsup.open_pool(jobs.load_model, idle=1, start_method=start_method) as pool:
        comm, args = await pool.run(jobs.process_names)
    slot = int(args.rpartition("slot=")[2])  # 0 or 1: a waiter may get either start
    assert args == f"{sys.executable} procsup worker load_model slot={slot}"
    assert comm == f"procsup/{slot} load_model"[:15]
    async with procsup.open_worker("service_jobs:load_model") as worker:
        assert (await worker.run(jobs.process_names))[1].endswith(
            "procsup worker load_model slot=0"
        )
    async with procsup.open_worker() as worker:
        assert await worker.run(jobs.process_names) == (
            "procsup/0",
            f"{sys.executable} procsup worker slot=0",
        )


_calls = itertools.count()


def env_failing_first(slot: int) -> dict[str, str]:
    if next(_calls) == 0:
        raise RuntimeError("the first start fails")
    return {}


async def test_a_pool_reaches_its_idle_target_after_a_failed_start() -> None:
    # One start fails while another is warming: once that one is warm, the
    # pool must start the missing worker (it used to wait for an event that
    # never came).
    async with procsup.open_pool(idle=2, max_workers=3, env=env_failing_first) as pool:
        with trio.fail_after(20):
            await pool.wait_warm()
        assert pool.statistics().start_failures == 1
