"""What a large pool costs the parent: file descriptors (it raises the soft
RLIMIT_NOFILE when it needs more, and refuses to open, naming the limit,
when even the hard one is short; each case runs a parent of its own with
lowered limits), and pings (idle workers at a bounded rate in all)."""

from __future__ import annotations

import json

import helpers
import pytest
import trio
from support import start_parent

import procsup
from procsup._pings import IDLE_PINGS_PER_SECOND
from procsup._worker import Worker

_PARENT = """
import json, resource, sys
import trio
import procsup
from helpers import noop

soft, hard, idle, method = (int(a) if a.isdigit() else a for a in sys.argv[1:])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

async def main():
    try:
        async with procsup.open_pool(idle=idle, max_jobs=None, start_method=method) as pool:
            await pool.wait_warm()
            await pool.run(noop)
            warm = pool.statistics().idle
    except procsup.DescriptorLimitError as exc:
        return {"error": str(exc), "needed": exc.needed, "soft": exc.soft, "hard": exc.hard}
    return {"warm": warm, "soft": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}

print(json.dumps(trio.run(main)))
"""


def _run(soft: int, hard: int, idle: int, start_method: str) -> dict[str, object]:
    parent = start_parent(_PARENT, str(soft), str(hard), str(idle), start_method)
    out, _ = parent.communicate(timeout=120)
    assert parent.returncode == 0, out
    return json.loads(out)  # type: ignore[no-any-return]


@pytest.mark.parametrize("start_method", ["exec", "forkserver"])
def test_a_pool_raises_the_soft_limit_when_it_needs_more(start_method: str) -> None:
    # 120 workers need about 400 descriptors: over the soft limit, under the hard.
    got = _run(soft=128, hard=1024, idle=120, start_method=start_method)
    assert got["soft"] == 1024
    assert int(str(got["warm"])) >= 120


def test_a_pool_over_the_hard_limit_says_which_limit() -> None:
    got = _run(soft=128, hard=256, idle=120, start_method="forkserver")
    assert "RLIMIT_NOFILE=256" in str(got["error"])
    assert "120 workers" in str(got["error"])
    assert got["hard"] == 256
    assert int(str(got["needed"])) > 256


async def test_a_large_pool_pings_its_idle_workers_at_a_bounded_rate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """20 idle workers, ping_interval=0.05: 400 pings a second unbounded,
    IDLE_PINGS_PER_SECOND in all; a busy one is pinged every ping_interval."""
    pinged: list[int] = []
    ping_due = Worker._ping_due

    def counting(self: Worker) -> None:
        pinged.append(self.pid)
        ping_due(self)

    monkeypatch.setattr(Worker, "_ping_due", counting)
    async with procsup.open_pool(
        idle=20, max_workers=20, max_jobs=None, ping_interval=0.05, ping_timeout=10.0
    ) as pool:
        await pool.wait_warm()
        await trio.sleep(1.0)  # the first pings, from before the pool was full
        pinged.clear()
        await trio.sleep(2.0)
        assert len(pinged) <= 3 * IDLE_PINGS_PER_SECOND
        pinged.clear()
        async with pool.acquire() as worker:
            await worker.run(helpers.sleep_for, 1.0)
        assert pinged.count(worker.pid) >= 5
