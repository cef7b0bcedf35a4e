"""The initializer and jobs of ``procsup demo``.

Every demo worker imports this module by name, so it stays standard-library
only at the top and everything here is module-level (picklable by reference).
"""

from __future__ import annotations

import os
import time
from typing import Any

__all__ = ["crash", "hang", "hog_memory", "load_model", "predict"]


def load_model(offline_flag: str, seconds: float = 0.5) -> dict[str, Any]:
    """Stand-in for loading a model: takes ``seconds``, then fails while the
    file ``offline_flag`` exists (the demo's "model store is offline")."""
    time.sleep(seconds)
    if os.path.exists(offline_flag):
        raise RuntimeError("model store offline: could not load the model")
    return {"weights": (0.5, 0.25, 0.125), "loaded_by": os.getpid()}


def predict(x: int, seconds: float) -> float:
    """A job that uses the model its worker loaded at warm-up."""
    import procsup

    model = procsup.worker_state()
    time.sleep(seconds)  # the "inference"
    return float(sum(w * x for w in model["weights"]))


def crash(code: int = 13) -> None:
    """Die without a word, as a segfaulting extension would."""
    os._exit(code)


def hang() -> None:
    """Never return (a deadlock, an endless retry loop...)."""
    while True:
        time.sleep(1.0)


def hog_memory(mb: int, hold: float = 30.0) -> int:
    """Allocate and touch ``mb`` MiB, then hold it for ``hold`` seconds."""
    block = b"\x01" * (mb * 1024 * 1024)  # filled, so every page is resident
    time.sleep(hold)
    return len(block)
