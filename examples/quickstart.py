"""The README example: a pool of workers that each load a model once."""

import time

import trio

import procsup


def load_model():
    """Runs once in each worker, before any job."""
    time.sleep(0.5)  # stand-in for slow imports and model loading
    return {"weights": [1, 2, 3]}


def predict(x):
    """Runs in a warm worker."""
    return sum(w * x for w in procsup.worker_state()["weights"])


async def main():
    async with procsup.open_pool(load_model, idle=2, init_timeout=10) as pool:
        print(await pool.run(predict, 10))  # 60, computed in a fresh warm process
        async with pool.acquire() as worker:  # or hold one worker for a while
            print(worker.pid, await worker.run(predict, 1))


if __name__ == "__main__":  # workers import this module to find the jobs
    trio.run(main)
