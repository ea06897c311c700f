"""Helpers for the protocol tests: run tests/protocol_server.py in a subprocess and talk to it.

The server runs in its own process, so a test process may drive it with nfbuilder's stubs while
another subprocess drives it with pynumaflow's (the two cannot share one protobuf pool).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parent.parent

INFO_FILES = {
    "map": "mapper-server-info",
    "sourcetransformer": "sourcetransformer-server-info",
    "source": "sourcer-server-info",
    "sink": "sinker-server-info",
}
SOCKETS = {
    "map": "map.sock",
    "sourcetransformer": "sourcetransform.sock",
    "source": "source.sock",
    "sink": "sink.sock",
}
CONTAINER_TYPES = {
    "map": "udf",
    "sourcetransformer": "transformer",
    "source": "udsource",
    "sink": "udsink",
}


def wait_for(condition: Callable[[], Any], what: str, deadline_s: float = 15.0) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``deadline_s``."""
    end = time.monotonic() + deadline_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s}s waiting for {what}")
        time.sleep(0.01)


class ServerProcess:
    """One ``python -m tests.protocol_server`` child with its own socket dir under tmp_path."""

    def __init__(
        self, tmp_path: Path, kind: str, *args: str, env: dict[str, str] | None = None
    ) -> None:
        self.kind = kind
        self.socket_dir = tmp_path / "s"
        self.runtime_dir = tmp_path / "rt"
        self.marks = tmp_path / "m"
        self.marks.mkdir(exist_ok=True)
        self.info_path = self.socket_dir / INFO_FILES[kind]
        self.socket_path = self.socket_dir / SOCKETS[kind]
        full_env = {
            **os.environ,
            "NFBUILDER_SOCKET_DIR": str(self.socket_dir),
            "NFBUILDER_RUNTIME_DIR": str(self.runtime_dir),
            "NUMAFLOW_UD_CONTAINER_TYPE": CONTAINER_TYPES[kind],
            "NUMAFLOW_GRPC_SHUTDOWN_GRACE_PERIOD_SECONDS": "2",
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.protocol_server", "--kind", kind,
             "--marks", str(self.marks), *args],
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def wait_ready(self) -> bytes:
        """Wait for the server-info file (numa's signal that the server is up); return it."""

        def ready() -> bytes | None:
            if self.proc.poll() is not None:
                _, err = self.proc.communicate()
                raise AssertionError(f"server exited with {self.proc.returncode}: {err.decode()}")
            if self.info_path.exists() and self.info_path.stat().st_size > 0:
                return self.info_path.read_bytes()
            return None

        return wait_for(ready, f"{self.info_path}")

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"unix://{self.socket_path}")

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait_exit(self, timeout_s: float = 15.0) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=timeout_s)
        return self.proc.returncode, err.decode()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()

    def __enter__(self) -> ServerProcess:  # noqa: PYI034 - this class is not subclassed
        self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_END = object()


class Duplex:
    """A bidi call driven step by step from a test: ``send`` requests, ``recv`` responses."""

    def __init__(self, method: Any, timeout_s: float = 10.0) -> None:
        self._requests: queue.Queue[Any] = queue.Queue()
        self.call = method(iter(self._requests.get, _END), timeout=timeout_s)
        self._responses: Iterator[Any] = iter(self.call)

    def send(self, *messages: Any) -> None:
        for message in messages:
            self._requests.put(message)

    def recv(self) -> Any:
        return next(self._responses)

    def recv_n(self, n: int) -> list[Any]:
        return [self.recv() for _ in range(n)]

    def close(self) -> None:
        self._requests.put(_END)
