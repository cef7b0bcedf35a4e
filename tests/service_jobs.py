"""Jobs and initializers for the running-as-a-service tests (environment,
slots, process names, captured output, logging). Workers import this module
by name, so everything here is module-level and picklable."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import procsup


def getenv(name: str) -> str | None:
    return os.environ.get(name)


def getenv_init() -> str | None:
    return os.environ.get("PROCSUP_TEST_GPU")


def slot_env(slot: int) -> dict[str, str]:
    return {"PROCSUP_TEST_GPU": f"gpu{slot}"}


def failing_env(slot: int) -> dict[str, str]:
    raise LookupError(f"no GPU for slot {slot}")


def not_a_mapping_env(slot: int) -> Any:
    return ["PROCSUP_TEST_GPU=x"]


def slot_and_env(name: str, hold: float = 0.0) -> tuple[int, str | None, int]:
    time.sleep(hold)
    return procsup.worker_slot(), os.environ.get(name), os.getpid()


def process_names() -> tuple[str, str]:
    with open("/proc/self/comm") as f:
        comm = f.read().strip()
    with open("/proc/self/cmdline", "rb") as f:
        args = f.read().rstrip(b"\0").decode()
    return comm, args


def load_model() -> str:
    return "model"


def print_and_write(tag: str) -> int:
    print(f"print to stdout {tag}")
    print(f"print to stderr {tag}", file=sys.stderr)
    os.write(1, f"os.write to fd 1 {tag}\npartial line {tag}".encode())
    os.write(2, f"os.write to fd 2 {tag}\n".encode())
    return os.getpid()


def print_in_init() -> None:
    print("printed by the initializer")


def flood_fd1(lines: int) -> int:
    line = b"flood line of some thirty bytes\n"
    batch = 1000
    for _ in range(lines // batch):
        os.write(1, line * batch)
    return lines


def log_debug_and_extra() -> int:
    logging.getLogger("tests.service.verbose").debug("debug from the worker")
    logging.getLogger("tests.service.quiet").info("info that the parent silenced")
    logging.getLogger("tests.service.verbose").warning(
        "with extras",
        extra={
            "user_id": 42,
            "ratio": 0.5,
            "flag": True,
            "nothing": None,
            "who": "me",
            "thing": object(),
        },
    )
    return os.getpid()
