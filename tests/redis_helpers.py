"""A real redis-server for the queue tests, on a unix socket in a temporary
directory (no TCP port), with AOF so that a restart keeps the queue."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest


class RedisServer:
    """One redis-server process; ``kill()`` SIGKILLs it, ``start()`` brings it
    back on the same directory (the AOF replays)."""

    def __init__(self, directory: Path, extra: tuple[str, ...] = ()) -> None:
        self.dir = directory
        self.extra = extra  # more redis-server arguments
        self.sock = directory / "r.sock"
        self.url = f"unix://{self.sock}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                "0",
                "--unixsocket",
                str(self.sock),
                "--unixsocketperm",
                "700",
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--maxmemory-policy",
                "noeviction",
                "--logfile",
                str(self.dir / "redis.log"),
                *self.extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 5
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                self.kill()
                raise RuntimeError(f"redis-server did not start:\n{log}")
            time.sleep(0.01)

    def ready(self) -> bool:
        import socket

        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(self.sock))
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            self.proc = None

    def cli(self, *args: str) -> str:
        """``redis-cli`` against this server; its output."""
        out = subprocess.run(
            ["redis-cli", "-s", str(self.sock), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()


def redis_server_for(tmp_path: Path, *extra: str) -> RedisServer:
    """Start one (``extra``: more arguments); skip when redis-server is
    missing, except under CI=true."""
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; under CI it must be", pytrace=False)
        pytest.skip(message)
    server = RedisServer(Path(tmp_path), extra)
    server.start()
    return server


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One real HTTP scrape of ``url``: ``{(name, sorted labels): value}``."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
