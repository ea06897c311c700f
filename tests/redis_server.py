"""A real `redis-server` process for tests: start on a free port, stop, restart with its data.

Redis refuses ``--port 0``, so a free port is found by binding a socket to port 0 first. The
server runs with ``--save '' --appendonly yes --dir <data_dir>``: every write goes to the AOF,
which a SIGTERM shutdown flushes, so data survives :meth:`RedisServer.restart`
(``appendonly=False``: no persistence at all, as a misconfigured production server).

Without `redis-server` on PATH the tests using it are skipped, unless the environment variable
``CI`` is set (to anything but ``0``/``false``): then they fail, so CI cannot skip them silently.

Example (tests/conftest.py registers this module as a plugin, so every test can ask for it)::

    def test_x(redis_server):
        client = redis.Redis.from_url(redis_server.url)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

START_DEADLINE_S = 10.0
STOP_DEADLINE_S = 10.0


def under_ci() -> bool:
    """True when the environment variable CI says we run in continuous integration."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_redis_server() -> str:
    """The path of `redis-server`; skips the test without it (fails it under CI)."""
    exe = shutil.which("redis-server")
    if exe is not None:
        return exe
    if under_ci():
        pytest.fail(
            "redis-server is not on PATH and CI is set: the Redis state store tests must run "
            "in CI; install it (Debian: apt-get install -y redis-server)"
        )
    pytest.skip(
        "redis-server is not on PATH (Debian: apt-get install -y redis-server); "
        "set CI=true to turn this skip into a failure"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One `redis-server` process on 127.0.0.1 keeping its AOF in `data_dir`."""

    def __init__(self, exe: str, data_dir: Path, *, appendonly: bool = True) -> None:
        self.exe = exe
        self.data_dir = data_dir
        self.appendonly = appendonly
        self.port = 0
        self.log_path = data_dir / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server (on a new free port the first time, the same port afterwards)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        first = self.port == 0
        # Another process may grab the probed port before redis binds it: probe again.
        for _ in range(5 if first else 1):
            if first:
                self.port = free_port()
            if self._spawn_and_wait():
                return
        raise RuntimeError(
            f"redis-server did not answer PING on port {self.port} within {START_DEADLINE_S} s; "
            f"log {self.log_path}:\n{self._log_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM the server and wait for it to exit (it flushes the AOF first)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same port with the same data directory."""
        self.stop()
        self.start()

    def _spawn_and_wait(self) -> bool:
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                [
                    self.exe, "--port", str(self.port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "yes" if self.appendonly else "no",
                    "--dir", str(self.data_dir), "--daemonize", "no",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False  # most likely the port was taken meanwhile
            if self._pings():
                self._proc = proc
                return True
            time.sleep(0.01)  # polling interval of a deadline loop, not synchronisation
        proc.kill()
        proc.wait()
        return False

    def _pings(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                # "-LOADING ..." while the AOF is replayed: not ready yet.
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"


def start_redis_server(data_dir: Path, *, appendonly: bool = True) -> RedisServer:
    """A running RedisServer with its data in `data_dir` (skips/fails without redis-server)."""
    server = RedisServer(require_redis_server(), data_dir, appendonly=appendonly)
    server.start()
    return server


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server for one test, stopped afterwards."""
    server = start_redis_server(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()
