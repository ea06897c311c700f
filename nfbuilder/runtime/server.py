"""The one server module: socket, server-info file, IsReady, signals, shutdown, fatal errors.

A vertex container calls :func:`serve` with its kind and a handler; it returns the process exit
code (0 after SIGTERM/SIGINT, 1 after a user-code error). The gRPC transport is the lean h2
one (:mod:`nfbuilder.runtime.h2server`, the default) or grpcio (``grpc.aio``, the reference),
chosen by ``settings.transport`` (NFBUILDER_TRANSPORT); everything else here is shared by both.

Example::

    sys.exit(serve("map", identity_handler, Settings.from_env()))
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Literal, cast

import attrs
import grpc
import grpc.aio

from nfbuilder._proto import map_pb2_grpc, source_pb2_grpc, sourcetransform_pb2_grpc
from nfbuilder.runtime import heap
from nfbuilder.runtime.errors import UNKNOWN_CONTAINER
from nfbuilder.runtime.h2server import H2Server, methods_of
from nfbuilder.runtime.messages import MapHandler, SinkHandler, SourceHandler
from nfbuilder.runtime.servicers import (
    MapServicer,
    SinkServicer,
    SourceServicer,
    TransformerServicer,
)
from nfbuilder.runtime.servicers.sink import add_to_server as add_sink_servicer_to_server
from nfbuilder.runtime.settings import Settings
from nfbuilder.runtime.stream import ErrorContract
from nfbuilder.runtime.workers import WorkerPool

log = logging.getLogger("nfbuilder.runtime")

#: "batchmap" is map.v1.Map in numa's batch mode (ordered vertices: a round trip per batch)
Kind = Literal["map", "batchmap", "sourcetransformer", "source", "sink"]
KINDS: tuple[Kind, ...] = ("map", "batchmap", "sourcetransformer", "source", "sink")
#: NUMAFLOW_UD_CONTAINER_TYPE the controller gives the (primary) container of each kind
UD_CONTAINER_TYPES: dict[Kind, str] = {
    "map": "udf", "batchmap": "udf", "sourcetransformer": "transformer", "source": "udsource",
    "sink": "udsink",
}

#: The end marker numa requires right after the JSON: these 13 ASCII characters, literally
#: "U+005C" then "__END__" (not a backslash: numa and pynumaflow compare this exact string).
END_MARKER = "U+005C__END__"

# numa compares `version` with its per-container minimum Python SDK version (PEP 440; the
# highest, on-success sink, is 0.11.1) and enables NackFn only from 0.11.0. nfbuilder's own
# version (0.x) means nothing to numa, so we report the pynumaflow release whose protocol we
# implement (0.14.0, Numaflow 1.8 protos): it passes every check and turns NackFn on.
PROTOCOL_COMPAT_VERSION = "0.14.0"
# Our protos need Numaflow 1.8 (total_partitions, ON_SUCCESS); "-z" means the 1.8.0 release.
MINIMUM_NUMAFLOW_VERSION = "1.8.0-z"

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # numa's hard-coded client limit
GRPC_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)
# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107


class ServerError(RuntimeError):
    """The server could not start (bad kind, unusable socket path, bind failure)."""


@attrs.frozen
class Endpoint:
    """Where a kind of server listens and announces itself (contract table §1.2).

    Example::

        endpoint_for("sink", Settings(socket_dir="/x", container_type="fb-udsink"))
        # Endpoint(socket_path='/x/fb-sink.sock', info_path='/x/fb-sinker-server-info', ...)
    """

    socket_path: str
    info_path: str
    metadata: tuple[tuple[str, str], ...] = ()


_SINK_ROLES = {"fb-udsink": "fb-", "ons-udsink": "ons-"}


def endpoint_for(kind: Kind, settings: Settings) -> Endpoint:
    """The socket path, server-info path and info metadata for ``kind``.

    The sink role (primary, fallback, on-success) comes from NUMAFLOW_UD_CONTAINER_TYPE, so
    one image serves all three.
    """
    base = Path(settings.socket_dir)
    if kind == "map":
        return Endpoint(
            str(base / "map.sock"), str(base / "mapper-server-info"), (("MAP_MODE", "unary-map"),)
        )
    if kind == "batchmap":  # numa reads MAP_MODE from the info file and dials batchmap.sock
        return Endpoint(str(base / "batchmap.sock"), str(base / "mapper-server-info"),
                        (("MAP_MODE", "batch-map"),))
    if kind == "sourcetransformer":
        return Endpoint(
            str(base / "sourcetransform.sock"), str(base / "sourcetransformer-server-info")
        )
    if kind == "source":
        return Endpoint(str(base / "source.sock"), str(base / "sourcer-server-info"))
    if kind == "sink":
        role = _SINK_ROLES.get(settings.container_type or "", "")
        return Endpoint(str(base / f"{role}sink.sock"), str(base / f"{role}sinker-server-info"))
    raise ServerError(f"unknown server kind {kind!r}; expected one of {', '.join(KINDS)}")


def server_info_text(endpoint: Endpoint) -> str:
    """The server-info file content: one JSON object, then the end marker, nothing else."""
    info = {
        "protocol": "uds",
        "language": "python",
        "minimum_numaflow_version": MINIMUM_NUMAFLOW_VERSION,
        "version": PROTOCOL_COMPAT_VERSION,
        "metadata": dict(endpoint.metadata),
    }
    return json.dumps(info) + END_MARKER


def write_atomically(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers see either no file or the whole file."""
    target = Path(path)
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with open(temp, "w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temp, target)


def write_error_report(settings: Settings, message: str, details: str) -> Path | None:
    """Persist ``<runtime>/application-errors/<container>/<ts>-udf.json`` (§1.7 schema).

    Returns the report path, or None when it could not be written (logged; the gRPC status
    still carries the error).
    """
    container = settings.container_type or UNKNOWN_CONTAINER
    directory = Path(settings.runtime_dir) / "application-errors" / container
    timestamp = int(time.time())
    report = {
        "container": container,
        "timestamp": timestamp,
        "code": "Internal error",
        "message": message,
        "details": details,
    }
    try:
        # 0o777 as numa does: the numa container may run as another user and evicts reports.
        directory.mkdir(mode=0o777, parents=True, exist_ok=True)
        current = directory / "current-udf.json"
        write_atomically(current, json.dumps(report))
        final = directory / f"{timestamp}-udf.json"
        os.replace(current, final)
    except OSError as exc:
        log.warning("could not write the error report under %s: %s", directory, exc)
        return None
    return final


class _Server:
    def __init__(self, kind: Kind, handler: object, settings: Settings, ordered: bool,
                 workers: int = 1, pool: WorkerPool | None = None, waits: bool = False) -> None:
        self.kind = kind
        self.handler = handler
        self.settings = settings
        self.ordered = ordered
        self.workers = workers
        self.pool = pool
        self.waits = waits
        self.endpoint = endpoint_for(kind, settings)
        self.exit_code = 0
        self._stop: asyncio.Event | None = None
        self._reported = False

    def on_fatal(self, status_message: str, traceback_text: str) -> None:
        """Called by a servicer before it aborts an RPC with a user-code error."""
        if not self._reported:  # one report per process, as numa and pynumaflow do
            self._reported = True
            write_error_report(self.settings, status_message, traceback_text)
        self.exit_code = 1
        if self._stop is not None:
            self._stop.set()

    def _servicer(self) -> tuple[Callable[[Any, Any], None], object]:
        """This kind's servicer and the generated function that registers it on a server."""
        settings, handler = self.settings, self.handler
        prefix = "UDSinkError, " if self.kind == "sink" else ""
        errors = ErrorContract(settings.container_type, self.on_fatal, prefix)
        workers = 1 if self.ordered else max(self.workers, settings.map_workers)
        if self.kind in ("map", "batchmap"):
            batch = self.kind == "batchmap"
            return (map_pb2_grpc.add_MapServicer_to_server,
                    MapServicer(cast(MapHandler, handler), errors,
                                workers=1 if batch else workers, batch=batch, pool=self.pool,
                                waits=self.waits))
        if self.kind == "sourcetransformer":
            return (sourcetransform_pb2_grpc.add_SourceTransformServicer_to_server,
                    TransformerServicer(cast(MapHandler, handler), errors, workers=workers))
        if self.kind == "source":
            return (source_pb2_grpc.add_SourceServicer_to_server,
                    SourceServicer(cast(SourceHandler, handler), errors))
        return add_sink_servicer_to_server, SinkServicer(cast(SinkHandler, handler), errors)

    def _prepare_socket(self) -> str:
        path = self.endpoint.socket_path
        if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
            raise ServerError(
                f"socket path {path!r} is {len(os.fsencode(path))} bytes, longer than the "
                f"{MAX_SOCKET_PATH_BYTES} a Unix socket allows; set NFBUILDER_SOCKET_DIR to a "
                "shorter directory"
            )
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # A restarted container finds its old socket in the shared emptyDir: remove it.
        Path(path).unlink(missing_ok=True)
        # ...and its old server-info file, which must not announce us before we are bound.
        Path(self.endpoint.info_path).unlink(missing_ok=True)
        return path

    def _bind_error(self, path: str, exc: Exception) -> ServerError:
        return ServerError(
            f"could not bind the {self.kind} server to unix://{path}: {exc}; check that "
            "the directory is writable and no other server uses it"
        )

    async def _start(self) -> Callable[[float], Awaitable[Any]]:
        """Bind and start the server on the configured transport; return its ``stop(grace)``."""
        add_to_server, servicer = self._servicer()
        path = self._prepare_socket()
        if self.settings.transport == "h2":
            h2_server = H2Server(methods_of(add_to_server, servicer),
                                 max_message_bytes=MAX_MESSAGE_BYTES)
            try:
                await h2_server.start(path)
            except OSError as exc:
                raise self._bind_error(path, exc) from exc
            return h2_server.stop
        server = grpc.aio.server(options=GRPC_OPTIONS)
        add_to_server(servicer, server)
        try:
            server.add_insecure_port(f"unix://{path}")
        except RuntimeError as exc:
            raise self._bind_error(path, exc) from exc
        await server.start()
        return cast(Callable[[float], Awaitable[Any]], server.stop)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        stop_server = await self._start()
        # A handler with its own resources (a TCP listener) starts them before we announce
        # ourselves, so "ready" means "accepting data" too.
        start = getattr(self.handler, "start", None)
        if start is not None:
            await start()
        heap.settle()  # start-up is over: per-message garbage is all that comes now
        # Only now, with the socket accepting connections, may numa find the info file.
        write_atomically(self.endpoint.info_path, server_info_text(self.endpoint))
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        log.info("%s server listening on unix://%s (%s transport)", self.kind,
                 self.endpoint.socket_path, self.settings.transport)
        try:
            await self._stop.wait()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            # The grace lets in-flight RPCs finish, including the one sending a fatal status.
            await stop_server(max(self.settings.shutdown_grace_s, 0.1))
            stop = getattr(self.handler, "stop", None)
            if stop is not None:
                await stop()
        log.info("%s server stopped (exit code %d)", self.kind, self.exit_code)
        return self.exit_code


def _run(main: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:  # uvloop is not available on Windows
        return asyncio.run(main)
    return uvloop.run(main)


def bind_to_parent(parent_pid: int | None) -> None:
    """Have this process get SIGTERM (a clean stop) when ``parent_pid``, the embedded engine that
    started it, dies, even by SIGKILL: no vertex is left running, holding its port (Linux
    ``PR_SET_PDEATHSIG``; elsewhere nothing is done). Exits at once if the parent is already
    gone."""
    if not parent_pid or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # it died before the call above
        raise SystemExit(0)


def serve(
    kind: Kind,
    handler: MapHandler | SinkHandler | SourceHandler,
    settings: Settings,
    *,
    ordered: bool = False,
    workers: int = 1,
    pool: WorkerPool | None = None,
    waits: bool = False,
) -> int:
    """Serve ``handler`` as a Numaflow ``kind`` server until told to stop; return the exit code.

    ``kind`` is "map" or "sourcetransformer" (``handler``: a sync :data:`MapHandler`),
    "source" (a :class:`SourceHandler`) or "sink" (an async :data:`SinkHandler`).
    ``ordered=True`` runs map handlers strictly one at a time in arrival order, whatever
    ``workers`` (threads running the handler at once: a vertex with async steps awaits that
    many messages together) or ``settings.map_workers`` say. Blocks; returns 0 after
    SIGTERM/SIGINT, 1 after a user-code error (reported to the client and to the runtime
    error-report directory). ``pool``: a map handler's worker processes, started (forked)
    before this call; stopped when the server stops. ``waits``: the map handler waits for
    async steps (batch mode runs it off the server's loop).

    Example::

        code = serve("map", lambda d: [Result(d.value)], Settings.from_env())
    """
    if kind not in KINDS:
        raise ServerError(f"unknown server kind {kind!r}; expected one of {', '.join(KINDS)}")
    try:
        return _run(_Server(kind, handler, settings, ordered, workers, pool, waits).run())
    finally:
        if pool is not None:
            pool.stop()
