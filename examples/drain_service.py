"""A trio service that drains its pool on SIGTERM (or Ctrl-C) before it exits.

The service takes requests (here: a fixed batch it makes up itself) and runs
each one in a warm worker. On SIGTERM or SIGINT it calls ``pool.drain()``:
no new job starts, the jobs already running finish (within DRAIN_TIMEOUT),
every worker is reaped, and the process exits with 128 + the signal's number
(143 for SIGTERM, 130 for SIGINT), as a process killed by it would. Without
a signal it serves its batch and exits 0.

Each line it prints says what happened to one request: ``started I PID``,
``done I PID`` or ``refused I`` (the pool was draining).
"""

import os
import signal
import sys
import time

import trio

import procsup

DRAIN_TIMEOUT = 30.0  # seconds; keep it below the supervisor's stop timeout
REQUESTS = 8


def handle_request(seconds):
    """The job: a stand-in for real work."""
    time.sleep(seconds)
    return os.getpid()


async def serve_one(pool, i):
    try:
        async with pool.acquire() as worker:
            print(f"started {i} {worker.pid}", flush=True)
            pid = await worker.run(handle_request, 0.5)
    except procsup.PoolClosedError:  # draining: a new request is refused
        print(f"refused {i}", flush=True)
        return
    print(f"done {i} {pid}", flush=True)


async def serve(pool):
    """Take requests until the batch is served or the pool drains."""
    async with trio.open_nursery() as nursery:
        for i in range(REQUESTS):
            if pool.statistics().state != "open":
                break  # draining: take no more requests
            nursery.start_soon(serve_one, pool, i)
            await trio.sleep(0.2)


async def main():
    """The exit status: 0 when the batch is served, else 128 + the signal."""
    status = 0
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with procsup.open_pool(idle=2, max_workers=2, max_jobs=None) as pool:

            async def drain_on_signal():
                nonlocal status
                async for signum in signals:
                    status = 128 + signum
                    print(f"draining on {signal.Signals(signum).name}", flush=True)
                    await pool.drain(DRAIN_TIMEOUT)  # running jobs finish; nothing new starts
                    return

            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain_on_signal)
                await serve(pool)
                if not status:
                    nursery.cancel_scope.cancel()  # served, no signal: stop listening
    return status


if __name__ == "__main__":
    sys.exit(trio.run(main))
