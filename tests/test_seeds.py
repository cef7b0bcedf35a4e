"""One regression test per seed (tests/seed_scenarios.py tells them): over
real processes, with each start method. The same scenarios run in virtual
time, without processes, in tests/test_pool_logic.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import seed_scenarios as seeds
from seed_scenarios import RealPools

pytestmark = pytest.mark.usefixtures("each_start_method")


async def test_seed_000_job_does_not_hang_when_every_initialization_fails() -> None:
    await seeds.seed_000_job_does_not_hang_when_every_initialization_fails(RealPools())


async def test_seed_001_init_that_never_answers_is_killed_and_does_not_wedge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROCSUP_SLOTS", str(tmp_path))  # where first_start_hangs_init counts starts
    await seeds.seed_001_init_that_never_answers_is_killed_and_does_not_wedge(RealPools())


async def test_seed_002_acquisition_is_bounded_when_init_times_out() -> None:
    await seeds.seed_002_acquisition_is_bounded_when_init_times_out(RealPools())


async def test_seed_003_a_running_job_holds_no_warming_lock() -> None:
    await seeds.seed_003_a_running_job_holds_no_warming_lock(RealPools())


async def test_seed_004_idle_target_direction_and_busy_not_counted_as_idle() -> None:
    await seeds.seed_004_idle_target_direction_and_busy_not_counted_as_idle(RealPools())
