"""A job module that keeps a socket open when imported in a worker."""

from __future__ import annotations

import os
import socket

import procsup

IMPORTED_BY = os.getpid()
SOCKETS = socket.socketpair() if procsup.in_worker() else ()


def touch() -> str:
    return "socket"
