"""Runtime settings: the one place that reads environment variables.

Example::

    settings = Settings.from_env()                       # in a container
    settings = Settings.from_env({"NFBUILDER_SOCKET_DIR": str(tmp_path)})   # in a test
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import attrs

from nfbuilder.runtime.framing import (
    DEFAULT_MAX_BUFFERED_BYTES,
    DEFAULT_MAX_FRAME,
    DEFAULT_MAX_PARTIAL_BYTES,
)

DEFAULT_SOCKET_DIR = "/var/run/numaflow"
DEFAULT_RUNTIME_DIR = "/var/numaflow/runtime"


class SettingsError(ValueError):
    """An environment variable has a value the runtime cannot use."""


def _int(environ: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(
            f"environment variable {name} must be an integer, got {raw!r}; "
            f"unset it to use the default ({default})"
        ) from None
    if value < minimum:
        raise SettingsError(
            f"environment variable {name} must be >= {minimum}, got {value}; "
            f"unset it to use the default ({default})"
        )
    return value


def _float(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also rejects NaN
        raise SettingsError(
            f"environment variable {name} must be a non-negative number of seconds, got {raw!r}; "
            f"unset it to use the default ({default})"
        )
    return value


def _str(environ: Mapping[str, str], name: str) -> str | None:
    return environ.get(name) or None


#: the values of NFBUILDER_TRANSPORT, the default first
TRANSPORTS = ("h2", "grpc")


def _choice(environ: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    raw = environ.get(name, "").strip()
    if not raw:
        return choices[0]
    if raw not in choices:
        raise SettingsError(f"environment variable {name} must be one of {', '.join(choices)}, "
                            f"got {raw!r}; unset it to use the default ({choices[0]})")
    return raw


def transport_from_env(environ: Mapping[str, str] = os.environ) -> str:
    """``NFBUILDER_TRANSPORT`` (one of :data:`TRANSPORTS`, the first by default), for the
    engine's clients, which need only this of the settings::

        transport_from_env({"NFBUILDER_TRANSPORT": "grpc"})   # 'grpc'
    """
    return _choice(environ, "NFBUILDER_TRANSPORT", TRANSPORTS)


@attrs.frozen
class Settings:
    """What a vertex container needs to know about its environment.

    Example::

        Settings(socket_dir="/tmp/x", container_type="udf")
    """

    socket_dir: str = DEFAULT_SOCKET_DIR
    runtime_dir: str = DEFAULT_RUNTIME_DIR
    container_type: str | None = None
    replica: int = 0
    vertex_name: str | None = None
    pipeline_name: str | None = None
    read_batch_size: int = 500
    read_timeout_ms: int = 1000
    shutdown_grace_s: float = 5.0
    state_store: str | None = None
    map_workers: int = 1
    tcp_bind_host: str | None = None  # overrides a TCP source's host (0.0.0.0 in a pod)
    plan_digest: str | None = None  # the digest of the plan the manifest was compiled from
    id_retention_s: float = 120.0  # how long a state keeps applied message ids (>= ackWait)
    parent_pid: int | None = None  # the embedded engine that started this vertex process
    # TCP source memory bounds, in bytes (see nfbuilder.runtime.tcpsource):
    max_frame: int = DEFAULT_MAX_FRAME  # largest payload one frame may declare
    source_buffer_bytes: int = DEFAULT_MAX_BUFFERED_BYTES  # complete frames held, not acked
    source_partial_bytes: int = DEFAULT_MAX_PARTIAL_BYTES  # partial frames, all connections
    #: the gRPC transport of our servers and of the engine's clients: "h2" (the lean one on
    #: the h2 library, the default) or "grpc" (grpcio, the reference)
    transport: str = "h2"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """Read the settings from ``environ`` (the process environment by default).

        Raises :class:`SettingsError` naming the variable when a value is unusable.
        """
        return cls(
            socket_dir=environ.get("NFBUILDER_SOCKET_DIR") or DEFAULT_SOCKET_DIR,
            runtime_dir=environ.get("NFBUILDER_RUNTIME_DIR") or DEFAULT_RUNTIME_DIR,
            container_type=_str(environ, "NUMAFLOW_UD_CONTAINER_TYPE"),
            replica=_int(environ, "NUMAFLOW_REPLICA", 0, minimum=0),
            vertex_name=_str(environ, "NUMAFLOW_VERTEX_NAME"),
            pipeline_name=_str(environ, "NUMAFLOW_PIPELINE_NAME"),
            read_batch_size=_int(environ, "NUMAFLOW_READ_BATCH_SIZE", 500, minimum=1),
            read_timeout_ms=_int(environ, "NUMAFLOW_READ_TIMEOUT_MS", 1000, minimum=0),
            shutdown_grace_s=_float(environ, "NUMAFLOW_GRPC_SHUTDOWN_GRACE_PERIOD_SECONDS", 5.0),
            state_store=_str(environ, "NFBUILDER_STATE_STORE"),
            map_workers=_int(environ, "NFBUILDER_MAP_WORKERS", 1, minimum=1),
            tcp_bind_host=_str(environ, "NFBUILDER_TCP_BIND_HOST"),
            plan_digest=_str(environ, "NFBUILDER_PLAN_DIGEST"),
            id_retention_s=_float(environ, "NFBUILDER_STATE_ID_RETENTION", 120.0),
            parent_pid=_int(environ, "NFBUILDER_PARENT_PID", 0, minimum=0) or None,
            max_frame=_int(environ, "NFBUILDER_MAX_FRAME", DEFAULT_MAX_FRAME, minimum=1),
            source_buffer_bytes=_int(
                environ, "NFBUILDER_SOURCE_BUFFER_BYTES", DEFAULT_MAX_BUFFERED_BYTES, minimum=1
            ),
            source_partial_bytes=_int(
                environ, "NFBUILDER_SOURCE_PARTIAL_BYTES", DEFAULT_MAX_PARTIAL_BYTES, minimum=1
            ),
            transport=transport_from_env(environ),
        )
