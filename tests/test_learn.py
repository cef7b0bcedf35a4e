"""A pool learns its jobs' modules: workers started after a job ran import
its module while warming, before they are ready (``learn_modules=True``)."""

from __future__ import annotations

import learn_jobs
import learn_jobs_bad
import learn_jobs_other
import pytest

import procsup

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
