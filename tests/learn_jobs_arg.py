"""A class that travels as a job's argument: a pool learns this module from
the job's pickled arguments (the job itself lives in learn_jobs)."""

from __future__ import annotations

import os

IMPORTED_BY = os.getpid()


class Point:
    def __init__(self, x: int) -> None:
        self.x = x
