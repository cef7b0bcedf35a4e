"""A trio TCP service that runs CPU-heavy jobs in a pool of warm workers.

A client sends one line holding a number ``n``; the service answers with the
count of primes below ``n``, computed in a worker process so the event loop
stays free. The demo starts the service on 127.0.0.1 (a free port), sends it a
fixed number of requests from its own clients, and shuts down.
"""

import functools
import math

import trio

import procsup

REQUEST_TIMEOUT = 10.0  # seconds a request may take, warm-up included


def load_small_primes():
    """The warm-up, once per worker: the primes below 1000 (a stand-in for a model)."""
    return [p for p in range(2, 1000) if all(p % d for d in range(2, math.isqrt(p) + 1))]


def count_primes(n):
    """The job: primes below ``n`` (``n`` up to 10**6), by trial division."""
    small = procsup.worker_state()
    return sum(1 for k in range(2, n) if all(k % p for p in small if p * p <= k))


async def handle(pool, stream):
    async with stream:
        line = b""
        while not line.endswith(b"\n") and len(line) < 100:
            chunk = await stream.receive_some(100)
            if not chunk:
                return
            line += chunk
        try:
            n = int(line)
            if not 0 <= n <= 10**6:
                raise ValueError
        except ValueError:
            await stream.send_all(b"error: send a number from 0 to 1000000\n")
            return
        answer = "error: timed out"
        with trio.move_on_after(REQUEST_TIMEOUT):  # cancelling kills the worker
            try:
                answer = str(await pool.run(count_primes, n))
            except procsup.ProcsupError as exc:  # the pool could not serve it
                answer = f"error: {exc}"
        await stream.send_all(answer.encode() + b"\n")


async def serve(pool, *, task_status=trio.TASK_STATUS_IGNORED):
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])  # the port
    await trio.serve_listeners(functools.partial(handle, pool), listeners)


async def ask(port, n, answers):
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"{n}\n".encode())
        reply = b""
        while chunk := await stream.receive_some():
            reply += chunk
    answers[n] = reply.decode().strip()


async def main():
    async with procsup.open_pool(load_small_primes, idle=2, max_workers=4) as pool:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve, pool)
            answers = {}
            async with trio.open_nursery() as clients:
                for n in (10, 1000, 20_000, 50_000, 100_000, -1):
                    clients.start_soon(ask, port, n, answers)
            nursery.cancel_scope.cancel()  # stop serving
        stats = pool.statistics()
    for n, answer in sorted(answers.items()):
        print(f"primes below {n}: {answer}")
    print(f"{stats.jobs_completed} jobs, {stats.starts} worker processes started")
    assert answers[100_000] == "9592"


if __name__ == "__main__":
    trio.run(main)
