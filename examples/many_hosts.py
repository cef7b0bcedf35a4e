"""A host and a producer sharing a queue on Redis Streams (procsup.redis).

Needs the redis extra (pip install 'procsup[redis]') and a redis-server
binary: it starts its own, on a unix socket in a temporary directory. In
production the host runs on each machine (``procsup serve``) and the URL
names your server, e.g. redis://10.0.0.5:6379/0.
"""

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

import procsup
import procsup.redis


def predict(x):
    return x * procsup.worker_state()["scale"]


def load():
    return {"scale": 2}  # runs once per worker: load the model here


async def host(url, task_status=trio.TASK_STATUS_IGNORED):
    async with (
        procsup.open_pool(load, idle=2, max_workers=2, max_jobs=None) as pool,
        procsup.redis.open_server(pool, predict, url=url, queue="jobs", lease=5.0),
    ):
        task_status.started()
        await trio.sleep_forever()  # until cancelled; or: await server.drain()


async def producer(url):
    async with procsup.redis.open_queue(url, "jobs") as q:
        job = await q.submit(21, key="request-42", ttl=30)
        assert await q.submit(21, key="request-42") == job  # deduplicated by key
        print("submit + result:", await q.result(job, timeout=30))
        print("call:", await q.call(5, timeout=30))
        try:
            await q.call({"not": "a number"}, timeout=30)
        except procsup.redis.RemoteJobError as exc:
            print("error:", exc.type, "-", exc.message)


async def main(url):
    async with trio.open_nursery() as nursery:
        await nursery.start(host, url)
        await producer(url)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    if shutil.which("redis-server") is None:
        sys.exit("this example needs redis-server (apt-get install redis-server)")
    with tempfile.TemporaryDirectory() as tmp:
        sock = Path(tmp) / "redis.sock"
        server = subprocess.Popen(
            [
                "redis-server",
                "--port",
                "0",
                "--unixsocket",
                str(sock),
                "--dir",
                tmp,
                "--save",
                "",
                "--appendonly",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            while not sock.exists():
                time.sleep(0.01)
            trio.run(main, f"unix://{sock}")
        finally:
            server.kill()
            server.wait()
