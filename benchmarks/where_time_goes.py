"""Where a one-shot job's time goes: W1's loop (2 callers, ``max_jobs=1``,
the fork server), with the CPU it costs split between the parent, the
template and the workers, and the workers' page faults.

    python benchmarks/where_time_goes.py [--jobs N] [--profile]

``--profile`` also prints a pyinstrument profile of the parent (``pip
install pyinstrument``). Linux only: it reads the template's ``/proc`` entry.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent.parent)]

import psutil  # noqa: E402
import trio  # noqa: E402

import procsup  # noqa: E402

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _template_counters(pid: int) -> tuple[float, float, int]:
    """The template's own CPU, its reaped workers' CPU, and their minor faults."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # after the name: state is field 3, so field n is fields[n - 3]
    cminflt = int(fields[11 - 3])
    utime, stime, cutime, cstime = (int(fields[n - 3]) for n in (14, 15, 16, 17))
    return (utime + stime) / _CLOCK_TICKS, (cutime + cstime) / _CLOCK_TICKS, cminflt


async def measure(total: int, profile: bool) -> dict[str, Any]:
    async with procsup.open_pool(idle=4, start_method="forkserver") as pool:
        await pool.wait_warm()
        (template,) = psutil.Process().children()
        profiler: Any = None
        if profile:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0002, async_mode="disabled")
            profiler.start()
        before = _template_counters(template.pid)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        left = total

        async def caller() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await pool.run(os.getpid)

        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(caller)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        after = _template_counters(template.pid)
        if profiler is not None:
            profiler.stop()
            print(profiler.output_text(unicode=False, show_all=False))
    return {
        "jobs/s": total / wall,
        "wall": wall / total,
        "parent": cpu / total,
        "template": (after[0] - before[0]) / total,
        "workers": (after[1] - before[1]) / total,
        "faults": (after[2] - before[2]) / total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    r = trio.run(measure, args.jobs, args.profile)
    print(
        f"{r['jobs/s']:.0f} jobs/s; per job: wall {r['wall'] * 1e3:.2f} ms; CPU: parent "
        f"{r['parent'] * 1e3:.2f} ms, template {r['template'] * 1e3:.2f} ms, worker "
        f"{r['workers'] * 1e3:.2f} ms ({r['faults']:.0f} page faults)"
    )


if __name__ == "__main__":
    main()
