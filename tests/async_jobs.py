"""Initializers and jobs for tests/test_async_workers.py, for workers with
``worker_loop`` set. Workers import this module by name; each function
imports its loop's library itself, so that importing the module imports
neither."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import procsup

# -- a TCP listener on 127.0.0.1, opened by the initializer, used by jobs


async def asyncio_listener_init() -> dict[str, Any]:
    import asyncio

    state: dict[str, Any] = {"served": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.readexactly(4)
        state["served"] += 1
        writer.write(data.upper() + str(state["served"]).encode())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state["server"] = server
    state["port"] = server.sockets[0].getsockname()[1]
    return state


async def asyncio_listener_job() -> tuple[bytes, int]:
    import asyncio

    state = procsup.worker_state()
    reader, writer = await asyncio.open_connection("127.0.0.1", state["port"])
    writer.write(b"ping")
    await writer.drain()
    reply = await reader.read()
    writer.close()
    await writer.wait_closed()
    return reply, state["port"]


async def trio_listener_init() -> dict[str, Any]:
    import functools

    import trio

    state: dict[str, Any] = {"served": 0}

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while len(data) < 4:
                data += await stream.receive_some(4 - len(data))
            state["served"] += 1
            await stream.send_all(data.upper() + str(state["served"]).encode())

    serve = functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1")
    listeners = await procsup.worker_nursery().start(serve)
    state["port"] = listeners[0].socket.getsockname()[1]
    return state


async def trio_listener_job() -> tuple[bytes, int]:
    import trio

    state = procsup.worker_state()
    async with await trio.open_tcp_stream("127.0.0.1", state["port"]) as stream:
        await stream.send_all(b"ping")
        reply = b""
        while chunk := await stream.receive_some():
            reply += chunk
    return reply, state["port"]


# -- an asyncio.Queue fed by a background task of the initializer


async def asyncio_queue_init() -> dict[str, Any]:
    import asyncio

    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)

    async def feed() -> None:
        n = 0
        while True:
            n += 1
            await queue.put(n)

    return {"queue": queue, "feeder": asyncio.create_task(feed(), name="feeder")}


async def asyncio_queue_job(count: int) -> tuple[list[int], str]:
    import asyncio

    queue = procsup.worker_state()["queue"]

    async def take() -> int:
        await asyncio.sleep(0.001)
        return int(await queue.get())

    items = await asyncio.gather(*(take() for _ in range(count)))
    slept = await asyncio.sleep(0.01, result="slept")
    return list(items), slept


# -- a background timer that ticks while trivial jobs run back to back


async def asyncio_ticker_init() -> dict[str, Any]:
    import asyncio

    state: dict[str, Any] = {"ticks": 0}

    async def tick() -> None:
        while True:
            await asyncio.sleep(0.001)
            state["ticks"] += 1

    state["ticker"] = asyncio.create_task(tick(), name="ticker")
    return state


async def trio_ticker_init() -> dict[str, Any]:
    import trio

    state: dict[str, Any] = {"ticks": 0}

    async def tick() -> None:
        while True:
            await trio.sleep(0.001)
            state["ticks"] += 1

    procsup.worker_nursery().start_soon(tick)
    return state


def ticks() -> int:
    return int(procsup.worker_state()["ticks"])


# -- cancellation


async def asyncio_sleep(seconds: float) -> str:
    import asyncio

    await asyncio.sleep(seconds)
    return "slept"


async def trio_sleep(seconds: float) -> str:
    import trio

    await trio.sleep(seconds)
    return "slept"


async def asyncio_ignore_cancel(seconds: float) -> str:
    import asyncio

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            pass  # and carry on
    return "done"


async def trio_ignore_cancel(seconds: float) -> str:
    import trio

    with trio.CancelScope(shield=True):
        await trio.sleep(seconds)
    return "done"


# -- a background task that crashes


async def asyncio_crashing_init() -> str:
    import asyncio

    async def crash() -> None:
        await asyncio.sleep(0.2)
        raise ValueError("background boom")

    task = asyncio.create_task(crash(), name="crasher")
    return f"holding {task.get_name()}"


async def trio_crashing_init() -> str:
    import trio

    async def crasher() -> None:
        await trio.sleep(0.2)
        raise ValueError("background boom")

    procsup.worker_nursery().start_soon(crasher)
    return "holding crasher"


async def asyncio_crashing_init_at_once() -> None:
    import asyncio

    async def crasher() -> None:
        raise ValueError("background boom")

    asyncio.create_task(crasher())  # noqa: RUF006 -- dropped on purpose: asyncio reports it
    await asyncio.sleep(0.1)


async def trio_crashing_init_at_once() -> None:
    import trio

    async def crasher() -> None:
        raise ValueError("background boom")

    procsup.worker_nursery().start_soon(crasher)
    await trio.sleep(0.1)


# -- shutdown: a background task's `finally` writes a file named after the pid, in `path`


async def asyncio_finally_init(path: str) -> str:
    import asyncio

    async def hold() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            # sync: a cancelled task may not await here
            Path(path, str(os.getpid())).write_text("finally ran")  # noqa: ASYNC240

    started = asyncio.Event()

    async def run() -> None:
        started.set()
        await hold()

    task = asyncio.create_task(run())
    await started.wait()
    return task.get_name()


async def trio_finally_init(path: str) -> str:
    import trio

    async def hold() -> None:
        try:
            await trio.sleep_forever()
        finally:
            # sync: a cancelled task may not await here
            Path(path, str(os.getpid())).write_text("finally ran")  # noqa: ASYNC240

    procsup.worker_nursery().start_soon(hold)
    return "holding"


# -- sync jobs on a loop worker, and other small jobs


def thread_and_loop() -> tuple[bool, str]:
    """Runs in the loop's thread: which loop is running there?"""
    import sys

    running = "none"
    if "asyncio" in sys.modules:
        import asyncio

        try:
            running = type(asyncio.get_running_loop()).__module__.split(".")[0]
        except RuntimeError:
            pass
    if running == "none" and "trio" in sys.modules:
        import trio

        try:
            trio.lowlevel.current_task()
            running = "trio"
        except RuntimeError:
            pass
    return threading.current_thread() is threading.main_thread(), running


async def async_noop() -> None:
    return None


def pid() -> int:
    return os.getpid()


async def async_echo(data: Any) -> Any:
    return data
