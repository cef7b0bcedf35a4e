"""Where shared memory starts to beat the socket for a payload: the round
trip of ``pool.run(jobs.echo, payload)`` on a reusing worker, for a few
sizes of ``bytes``, in band (``shm_min_bytes=None``) and through shared
memory (``shm_min_bytes=1``). Chooses procsup's default ``shm_min_bytes``.

    python benchmarks/shm_threshold.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent.parent)]

import jobs  # noqa: E402
import trio  # noqa: E402
from _util import median  # noqa: E402

import procsup  # noqa: E402

SIZES_KIB = (16, 64, 128, 192, 256, 1024, 4096, 16384)


async def echo_times(shm_min_bytes: int | None, payload: bytes, rounds: int) -> float:
    async with procsup.open_pool(idle=1, max_jobs=None, shm_min_bytes=shm_min_bytes) as pool:
        await pool.wait_warm()
        for _ in range(3):
            await pool.run(jobs.echo, payload)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            await pool.run(jobs.echo, payload)
            times.append(time.perf_counter() - start)
    return median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    print("| size | socket (median) | shared memory (median) | shm / socket |")
    print("| --- | --- | --- | --- |")
    for kib in SIZES_KIB:
        payload = os.urandom(1024) * kib
        socket = trio.run(echo_times, None, payload, args.rounds)
        shm = trio.run(echo_times, 1, payload, args.rounds)
        print(f"| {kib} KiB | {socket * 1e3:.2f} ms | {shm * 1e3:.2f} ms | {shm / socket:.2f}x |")


if __name__ == "__main__":
    main()
