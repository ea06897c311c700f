"""One vertex replica as a local process: start it from the manifest command, connect the
numa-like client to its socket, restart it when it dies (as Kubernetes would).

::

    rep = Replica(spec, work_dir, env)
    await rep.start()          # process up, server-info checked, IsReady, handshake done
    await rep.client.map(...)  # or .write / .read / .ack
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, cast

import attrs

from nfbuilder.local.clients import (
    ClientError,
    MapClient,
    SinkClient,
    SourceClient,
    TransformClient,
    connect,
    wait_ready,
)
from nfbuilder.local.serverinfo import wait_server_info
from nfbuilder.runtime.server import UD_CONTAINER_TYPES, Kind, endpoint_for
from nfbuilder.runtime.settings import Settings, transport_from_env

START_DEADLINE_S = 60.0
#: the bounds of each replica's input queue: messages, and bytes of their values
QUEUE_MESSAGES = 1000
QUEUE_BYTES = 16 * 2**20


@attrs.frozen
class ReplicaSpec:
    doc: str
    vertex: str
    kind: str  # map | batchmap | sink | source | sourcetransformer (kafka-sink: no process)
    replica: int
    command: tuple[str, ...]
    #: requests a map (unary mode) or transformer replica has outstanding at most; an ordered
    #: vertex is in batch mode, one batch at a time
    in_flight: int = 500
    indexed: bool = False  # one of several replicas: its label shows which
    role: str = ""  # "transformer": the vertex's second container (a TCP source's decoder)

    @property
    def label(self) -> str:
        name = f"{self.vertex}/{self.role}" if self.role else self.vertex
        return f"{name}[{self.replica}]" if self.indexed else name


class Replica:
    """A vertex process plus its client; ``redeliver`` holds messages to send again first."""

    def __init__(self, spec: ReplicaSpec, work_dir: Path, env: dict[str, str], index: int) -> None:
        self.spec = spec
        # Short socket directories: a Unix socket path must fit in 107 bytes.
        self.dir = work_dir / "s" / str(index)
        role = f"-{spec.role}" if spec.role else ""
        self.log_path = work_dir / "logs" / f"{spec.vertex}{role}-{spec.replica}.log"
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.channel: Any = None
        self.client: Any = None
        self.ready = asyncio.Event()
        #: the messages waiting for this replica, oldest first: at most QUEUE_MESSAGES of
        #: them, and writers wait while they hold QUEUE_BYTES or more (see ``put_many``)
        self.queue: deque[Any] = deque()
        self.queued_bytes = 0
        self._room = asyncio.Event()
        self._room.set()
        self._arrived = asyncio.Event()  # set while the queue is not empty
        self.redeliver: deque[Any] = deque()
        self.redeliver_at = 0.0  # time.monotonic() from which the redeliveries are sent
        #: message id -> time.monotonic() it was sent, while the replica works on it
        self.busy: dict[str, float] = {}
        self.restarts = 0
        self.processed = 0
        self.streak = 0  # consecutive failures without a processed message in between
        self.processed_at_failure = -1
        self.stopping = False

    async def start(self) -> None:
        # the same socket and server-info paths the server derives from its environment
        kind = cast(Kind, self.spec.kind)
        ud_type = UD_CONTAINER_TYPES[kind]
        endpoint = endpoint_for(kind, Settings(str(self.dir), container_type=ud_type))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # A restarted replica must not find its predecessor's file before the server replaces it.
        Path(endpoint.info_path).unlink(missing_ok=True)  # noqa: ASYNC240 - a local unlink
        env = {
            **os.environ,
            **self.env,
            "NFBUILDER_SOCKET_DIR": str(self.dir),
            "NFBUILDER_RUNTIME_DIR": str(self.dir / "runtime"),
            "NUMAFLOW_UD_CONTAINER_TYPE": ud_type,
            "NUMAFLOW_REPLICA": str(self.spec.replica),
            "NUMAFLOW_VERTEX_NAME": self.spec.vertex,
            "NUMAFLOW_PIPELINE_NAME": self.spec.doc,
            # the process stops when the engine dies, even by SIGKILL (no orphans)
            "NFBUILDER_PARENT_PID": str(os.getpid()),
        }
        cmd = list(self.spec.command)
        if cmd and cmd[0] == "python":
            cmd[0] = sys.executable
        # Handed to the child as stdout/stderr and closed in ``finally`` once it has been spawned;
        # opening a local log file does not block the loop for any meaningful time.
        log = open(self.log_path, "ab")  # noqa: SIM115, ASYNC230
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *cmd, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()
        info_task = asyncio.ensure_future(
            wait_server_info(endpoint.info_path, poll_s=0.05, deadline_s=START_DEADLINE_S)
        )
        died = asyncio.ensure_future(self.proc.wait())
        done, _ = await asyncio.wait({info_task, died}, return_when=asyncio.FIRST_COMPLETED)
        if died in done:
            info_task.cancel()
            raise ReplicaDied(self, self.proc.returncode)
        died.cancel()
        server_info = info_task.result()
        # NFBUILDER_TRANSPORT picks the clients' channel: the lean h2 one (default) or grpcio
        self.channel = await connect(endpoint.socket_path, retry_s=0.05,
                                     deadline_s=START_DEADLINE_S, transport=transport_from_env())
        if self.spec.kind in ("map", "batchmap"):
            from nfbuilder._proto import map_pb2_grpc

            await wait_ready(map_pb2_grpc.MapStub(self.channel), retry_s=0.05, deadline_s=30)
            self.client = await MapClient.open(self.channel, max_in_flight=self.spec.in_flight,
                                               name=self.spec.label)
        elif self.spec.kind == "sink":
            from nfbuilder._proto import sink_pb2_grpc

            await wait_ready(sink_pb2_grpc.SinkStub(self.channel), retry_s=0.05, deadline_s=30)
            self.client = await SinkClient.open(self.channel, name=self.spec.label)
        elif self.spec.kind == "sourcetransformer":
            from nfbuilder._proto import sourcetransform_pb2_grpc

            stub = sourcetransform_pb2_grpc.SourceTransformStub(self.channel)
            await wait_ready(stub, retry_s=0.05, deadline_s=30)
            self.client = await TransformClient.open(
                self.channel, max_in_flight=self.spec.in_flight, name=self.spec.label)
        else:
            from nfbuilder._proto import source_pb2_grpc

            await wait_ready(source_pb2_grpc.SourceStub(self.channel), retry_s=0.05, deadline_s=30)
            self.client = await SourceClient.open(self.channel,
                                                  supports_nack=server_info.supports_nack)
        self.ready.set()

    async def put_many(self, msgs: Any) -> None:
        """Queue ``msgs`` in order (their ``value`` bytes are counted), each waiting while the
        queue is full by count or by bytes; a message bigger than the whole bound still goes,
        into an empty queue."""
        queue = self.queue
        for msg in msgs:
            while (len(queue) >= QUEUE_MESSAGES or self.queued_bytes >= QUEUE_BYTES) and queue:
                self._arrived.set()  # what is queued already must reach the reader
                self._room.clear()
                await self._room.wait()
            self.queued_bytes += len(msg.value)
            queue.append(msg)
        if queue:
            self._arrived.set()

    def take(self, n: int) -> list[Any]:
        """Up to ``n`` queued messages, oldest first (none when the queue is empty)."""
        queue = self.queue
        if n >= len(queue):
            taken = list(queue)
            queue.clear()
            self._arrived.clear()
        else:
            taken = [queue.popleft() for _ in range(n)]
        self.queued_bytes -= sum([len(m.value) for m in taken])
        if len(queue) < QUEUE_MESSAGES and self.queued_bytes < QUEUE_BYTES:
            self._room.set()
        return taken

    async def arrival(self, timeout_s: float) -> None:
        """Wait until a message is queued, at most ``timeout_s``."""
        if not self.queue:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout_s)

    @property
    def pending(self) -> int:
        """Messages waiting for this replica: queued, or to be delivered again."""
        return len(self.queue) + len(self.redeliver)

    def redelivery_due(self) -> bool:
        return time.monotonic() >= self.redeliver_at

    def connected(self) -> Any:
        """The client, or :class:`NotConnected` while the replica is (re)starting or stopped."""
        client = self.client
        if client is None:
            raise NotConnected(f"{self.spec.label} is not connected (starting or stopped)")
        return client

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def error_report(self) -> str | None:
        """The user-code error report the server wrote before exiting, if any."""
        base = self.dir / "runtime" / "application-errors"
        reports = sorted(base.glob("*/*-udf.json")) if base.exists() else []
        if not reports:
            return None
        import json

        data = json.loads(reports[-1].read_text())
        for r in reports:
            r.unlink(missing_ok=True)
        return f"{data.get('message', '')}\n{data.get('details', '')}".strip()

    async def stop(self, grace_s: float = 5.0) -> None:
        self.ready.clear()
        await self._close_client()
        if self.proc is not None and self.proc.returncode is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(self.proc.wait(), grace_s)
            except (ProcessLookupError, asyncio.TimeoutError):
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()

    async def _close_client(self) -> None:
        client, channel = self.client, self.channel
        self.client = self.channel = None
        if client is not None:
            with contextlib.suppress(Exception):  # the stream may already be broken
                await asyncio.wait_for(client.close(), 2)
        if channel is not None:
            await channel.close()


class NotConnected(ClientError):
    """A call on a replica whose client is not there (it is restarting or stopped)."""


class ReplicaDied(Exception):
    def __init__(self, replica: Replica, code: int | None) -> None:
        super().__init__(f"{replica.spec.label} exited with status {code} while starting")
        self.replica = replica
        self.code = code
