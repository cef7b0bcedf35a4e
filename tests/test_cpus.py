"""procsup.available_cpus() against fake cgroup trees (temporary
directories, never the machine's), and the pool defaults built on it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

import procsup
from procsup import _options
from procsup._cpus import _available_cpus
from procsup._options import PoolOptions


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def cpus(tmp_path: Path, proc_cgroup: str, files: dict[str, str], affinity: int = 8) -> int:
    root = tmp_path / "cgroup"
    root.mkdir(exist_ok=True)
    write(root, files)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(proc_cgroup)
    return _available_cpus(affinity, root, proc)


def test_v2_quota_is_rounded_up(tmp_path: Path) -> None:
    files = {"app/cpu.max": "150000 100000\n"}
    assert cpus(tmp_path, "0::/app\n", files) == 2


def test_v2_no_limit_leaves_the_affinity_count(tmp_path: Path) -> None:
    files = {"app/cpu.max": "max 100000\n", "cpu.max": "max 100000\n"}
    assert cpus(tmp_path, "0::/app\n", files, affinity=6) == 6


def test_v2_a_parent_cgroup_limit_applies(tmp_path: Path) -> None:
    files = {"a/cpu.max": "300000 100000\n", "a/b/cpu.max": "max 100000\n"}
    assert cpus(tmp_path, "0::/a/b\n", files) == 3


def test_v2_the_smallest_limit_on_the_path_wins(tmp_path: Path) -> None:
    files = {"a/cpu.max": "100000 100000\n", "a/b/cpu.max": "400000 100000\n"}
    assert cpus(tmp_path, "0::/a/b\n", files) == 1


def test_v2_inside_a_container_the_host_path_is_absent(tmp_path: Path) -> None:
    # The namespace's root is the container's own cgroup.
    files = {"cpu.max": "200000 100000\n"}
    assert cpus(tmp_path, "0::/kubepods/pod1/abc\n", files) == 2


def test_a_quota_above_the_affinity_mask_does_not_raise_it(tmp_path: Path) -> None:
    files = {"cpu.max": "1600000 100000\n"}
    assert cpus(tmp_path, "0::/\n", files, affinity=2) == 2


def test_at_least_one_cpu(tmp_path: Path) -> None:
    files = {"cpu.max": "1000 100000\n"}  # 0.01 CPU
    assert cpus(tmp_path, "0::/\n", files) == 1


def test_v1_cfs_quota(tmp_path: Path) -> None:
    files = {
        "cpu,cpuacct/docker/x/cpu.cfs_quota_us": "250000\n",
        "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n",
        "cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
        "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
    }
    proc = "12:memory:/docker/x\n4:cpu,cpuacct:/docker/x\n1:name=systemd:/docker/x\n"
    assert cpus(tmp_path, proc, files) == 3


def test_v1_separate_cpu_mount_and_no_quota(tmp_path: Path) -> None:
    files = {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}
    assert cpus(tmp_path, "4:cpu:/\n", files, affinity=5) == 5


def test_unreadable_or_garbage_files_mean_no_limit(tmp_path: Path) -> None:
    files = {"cpu.max": "garbage\n"}
    assert cpus(tmp_path, "0::/\n", files, affinity=3) == 3
    missing = tmp_path / "nothing-here"
    assert _available_cpus(3, missing, missing) == 3


def test_the_real_call_answers_within_the_affinity_mask() -> None:
    assert 1 <= procsup.available_cpus() <= len(os.sched_getaffinity(0))


# -- the pool's defaults ---------------------------------------------------------


@pytest.fixture
def one_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_options, "available_cpus", lambda: 1)


@pytest.mark.usefixtures("one_cpu")
def test_defaults_agree_in_a_one_cpu_container() -> None:
    options = PoolOptions()
    assert (options.idle, options.max_workers, options.start_slots) == (1, 1, 1)


@pytest.mark.usefixtures("one_cpu")
def test_an_idle_given_is_never_refused_by_the_default_cap() -> None:
    options = PoolOptions(idle=4)
    assert (options.idle, options.max_workers) == (4, 4)


def test_the_default_idle_is_four_at_most(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_options, "available_cpus", lambda: 16)
    assert (PoolOptions().idle, PoolOptions().max_workers) == (4, 16)
    assert (PoolOptions(max_workers=None).idle, PoolOptions(max_workers=2).idle) == (4, 2)


def test_an_explicit_cap_below_idle_is_still_refused() -> None:
    with pytest.raises(ValueError, match="idle=4 is more than max_workers=2"):
        PoolOptions(idle=4, max_workers=2)


@pytest.mark.usefixtures("one_cpu")
async def test_a_default_pool_on_one_cpu_runs_one_job_at_a_time() -> None:
    samples: list[procsup.PoolStatistics] = []
    pools: list[procsup.Pool] = []

    def sample(event: object) -> None:  # at each event, as it happens
        samples.extend(pool.statistics() for pool in pools)

    async with procsup.open_pool(on_event=sample) as pool:
        pools.append(pool)
        assert pool._options.max_workers == 1

        async def one() -> None:
            await pool.run(os.getpid)

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(one)
        assert pool.statistics().jobs_completed == 4
    assert max(s.busy for s in samples) == 1
    # one-shot workers (max_jobs=1) that have answered and are only exiting
    # may be replaced before their reap, at most PoolOptions().max_exiting of them
    assert max(s.live for s in samples) <= 1 + PoolOptions().max_exiting
