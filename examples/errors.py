"""What each procsup error means, and one way to handle it.

Every section triggers one failure on purpose and handles it.
"""

import os
import time

import trio

import procsup

# -- jobs and initializers (module-level, so that workers can import them) ----


def parse(text):
    return int(text)


def exit_abruptly():
    os._exit(3)  # like a segfault or the OOM killer: no answer, the process is gone


def slow():
    time.sleep(60)


def hold_memory(mb):
    block = bytearray(mb * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])  # touch every page
    time.sleep(10)


def broken_init():
    raise RuntimeError("model file missing")


# -- one section per error ------------------------------------------------------


async def job_raised(pool):
    try:
        await pool.run(parse, "not a number")
    except ValueError as exc:  # the job's own exception, same type
        print("job raised:", repr(exc))
        print("its traceback in the worker is attached:", type(exc.__cause__).__name__)


async def bad_arguments(pool):
    try:
        await pool.run(parse, lambda: "1")  # a lambda does not pickle
    except procsup.SerializationError as exc:  # raised before anything is sent
        print("not sent:", exc)


async def worker_crashed(pool):
    try:
        await pool.run(exit_abruptly)
    except procsup.WorkerCrashedError as exc:
        print(f"crashed: phase={exc.phase} exit_code={exc.exit_code} signal={exc.signal_name}")


async def deadline(pool):
    try:
        await pool.run(slow, timeout=0.5)  # from when the job reaches a worker
    except procsup.JobTimeoutError as exc:
        print(f"stopped after {exc.timeout:g} s; its worker was reaped:", exc)
    with trio.move_on_after(0.5) as scope:  # a deadline on the whole call
        await pool.run(slow)
    print("gave up after 0.5 s; the worker was killed and reaped:", scope.cancelled_caught)


async def retired_worker(pool):
    async with pool.acquire() as worker:  # max_jobs=1: one job per worker
        await worker.run(parse, "1")
        try:
            await worker.run(parse, "2")
        except procsup.WorkerClosedError as exc:
            print("retired:", exc)


async def memory_limit():
    async with procsup.open_pool(idle=1, memory_limit_mb=100, memory_interval=0.1) as pool:
        try:
            await pool.run(hold_memory, 200)
        except procsup.MemoryLimitError as exc:
            print(f"killed at {exc.measured_mb:.0f} MiB ({exc.metric}), limit {exc.limit_mb:g}")


async def start_failed():
    try:
        async with procsup.open_worker(broken_init):
            pass
    except procsup.WorkerStartError as exc:
        print("start failed:", exc.remote_type, "-", exc)
        print(exc.remote_traceback.splitlines()[-1])


async def no_worker():
    async with procsup.open_pool(broken_init, idle=1, max_acquire_attempts=2) as pool:
        try:
            await pool.run(parse, "1")
        except procsup.NoWorkerAvailableError as exc:
            print("no worker:", len(exc.start_errors), "start errors, last:", exc.start_errors[-1])
        print("pool health:", pool.statistics().health)


async def main():
    async with procsup.open_pool(idle=1) as pool:
        await job_raised(pool)
        await bad_arguments(pool)
        await worker_crashed(pool)
        await deadline(pool)
        await retired_worker(pool)
    await memory_limit()
    await start_failed()
    await no_worker()


if __name__ == "__main__":
    trio.run(main)
