"""A job module that takes 2 s to import in a worker."""

from __future__ import annotations

import os
import time

import procsup

IMPORTED_BY = os.getpid()
if procsup.in_worker():
    time.sleep(2.0)


def touch() -> str:
    return "slow"
