"""Channel set-up, readiness and error decoding shared by the numa-like clients.

`numa` dials a UDF's Unix socket (retrying every second, forever), then calls ``IsReady`` every
second until the RPC succeeds (contract §1.4–§1.6); it sets no deadlines. A stream that ends
with an error carries the UDF's status message and, in ``grpc-status-details-bin``, a
``google.rpc.Status`` whose ``DebugInfo`` holds the user's traceback (§1.7).

    channel = await connect(sock_dir / "map.sock", retry_s=0.05, deadline_s=30)
    await wait_ready(map_pb2_grpc.MapStub(channel), retry_s=0.05, deadline_s=30)

Two transports give the same :data:`Channel` API (the part of ``grpc.aio.Channel`` the stubs
use): ``transport="grpc"``, grpcio's channel, this function's default and the reference, and
``transport="h2"``, the lean :class:`~nfbuilder.local.h2client.H2Channel` (what the engine uses
unless NFBUILDER_TRANSPORT says otherwise).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeAlias

import grpc
import grpc.aio
from google.protobuf import empty_pb2, timestamp_pb2

from nfbuilder._proto import metadata_pb2
from nfbuilder.local.h2client import H2Channel
from nfbuilder.runtime.settings import TRANSPORTS

#: numa's client limit for both directions (hard-coded in v1.8.3).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: numa's tonic endpoint is a dummy TCP URI, so servers see this ``:authority``.
_AUTHORITY = "[::1]:50051"
_DETAILS_KEY = "grpc-status-details-bin"
_NS = 1_000_000_000

#: User metadata as the clients expose it: group -> key -> bytes.
UserMetadata = Mapping[str, Mapping[str, bytes]]
#: What the clients and the generated stubs are given: either transport's channel.
Channel: TypeAlias = grpc.aio.Channel | H2Channel


class ClientError(Exception):
    """Base class of every error raised by the numa-like clients."""


class ConnectTimeout(ClientError):
    """The UDF socket did not accept a connection, or IsReady never succeeded, in time."""


class UdfProtocolError(ClientError):
    """The UDF broke the wire contract (bad handshake, partial response, unknown id, ...).

    ``numa`` treats each of these as fatal; the message says which rule and what was received.
    """


class UdfStreamError(ClientError):
    """A UDF RPC or stream ended with an error (or closed early); every pending call gets it.

    Carries what numa's error report records: the gRPC status ``code`` (None when the stream
    just closed), the status ``message`` and ``debug_info``, the ``DebugInfo.detail`` decoded
    from ``grpc-status-details-bin`` (the UDF's traceback), or its raw bytes when undecodable.

        try:
            await client.map(...)
        except UdfStreamError as exc:
            print(exc.code, exc.container, exc.debug_info)
    """

    def __init__(self, what: str, code: grpc.StatusCode | None, message: str,
                 debug_info: str = "") -> None:
        self.what = what
        self.code = code
        self.message = message
        self.debug_info = debug_info
        status = code.name if code is not None else "closed"
        text = f"{what} failed: {status}: {message}"
        if debug_info:
            text += f"\n--- UDF debug info ---\n{debug_info.rstrip()}"
        super().__init__(text)

    @property
    def container(self) -> str:
        """The container named in ``UDF_EXECUTION_ERROR(<container>): ...``, else ``numa``."""
        start, end = self.message.find("("), self.message.find(")")
        if start == -1 or end <= start:
            return "numa"
        return self.message[start + 1 : end]


def stream_error(what: str, exc: grpc.aio.AioRpcError) -> UdfStreamError:
    """Turn a failed RPC into a :class:`UdfStreamError`, decoding the DebugInfo trailer.

        except grpc.aio.AioRpcError as exc:
            raise stream_error("map stream to map.sock", exc) from None
    """
    trailers = exc.trailing_metadata() or ()
    raw = next((value for key, value in trailers if key == _DETAILS_KEY), None)
    debug = decode_status_details(raw) if isinstance(raw, bytes) else ""
    return UdfStreamError(what, exc.code(), exc.details() or "", debug)


def decode_status_details(raw: bytes) -> str:
    """``DebugInfo.detail`` texts from a serialized ``google.rpc.Status`` (raw repr on failure).

        decode_status_details(trailer_bytes)  # "Traceback (most recent call last): ..."
    """
    from google.protobuf.message import DecodeError
    from google.rpc import error_details_pb2, status_pb2

    try:
        status = status_pb2.Status.FromString(raw)
        texts = []
        for any_detail in status.details:
            info = error_details_pb2.DebugInfo()
            if any_detail.Unpack(info):
                texts.append(info.detail or "\n".join(info.stack_entries))
    except DecodeError:
        return repr(raw)  # numa falls back to the raw bytes too
    return "\n".join(texts)


def socket_uri(socket_path: str | os.PathLike[str]) -> str:
    """The grpc target for a Unix socket path: ``unix:///abs/path.sock``."""
    return "unix://" + os.path.abspath(os.fspath(socket_path))


async def connect(
    socket_path: str | os.PathLike[str],
    *,
    retry_s: float = 1.0,
    deadline_s: float | None = None,
    transport: str = "grpc",
) -> Channel:
    """Open an h2c channel over a Unix socket and wait until it is connected.

    Like numa: no TLS, 64 MiB messages, no deadlines on calls, reconnect attempts ``retry_s``
    apart. ``deadline_s=None`` waits forever; the wait is cancellable. ``transport`` is "grpc"
    (grpcio; its reconnect backoff is pinned to ``retry_s``) or "h2" (one HTTP/2 connection,
    not re-established once lost: the engine reconnects with the replica). The caller owns the
    channel (``await channel.close()``).

        channel = await connect("/tmp/x/map.sock", retry_s=0.05, deadline_s=10)
        channel = await connect("/tmp/x/map.sock", retry_s=0.05, transport="h2")
    """
    if transport not in TRANSPORTS:
        raise ValueError(f"unknown transport {transport!r}; expected one of "
                         f"{', '.join(TRANSPORTS)}")
    try:
        if transport == "h2":
            return await asyncio.wait_for(_dial_h2(socket_path, retry_s), timeout=deadline_s)
        return await _dial_grpc(socket_path, retry_s, deadline_s)
    except asyncio.TimeoutError:
        raise ConnectTimeout(
            f"could not connect to the UDF socket {socket_path} within {deadline_s} s "
            f"(retrying every {retry_s} s); check that the vertex process is running and binds "
            "that path"
        ) from None


async def _dial_h2(socket_path: str | os.PathLike[str], retry_s: float) -> H2Channel:
    path = os.fspath(socket_path)
    while True:
        try:
            return await H2Channel.connect(path, authority=_AUTHORITY,
                                           max_message_bytes=MAX_MESSAGE_BYTES)
        except OSError:  # not there yet, refused, or closed before its SETTINGS
            await asyncio.sleep(retry_s)


async def _dial_grpc(socket_path: str | os.PathLike[str], retry_s: float,
                     deadline_s: float | None) -> grpc.aio.Channel:
    backoff_ms = max(1, int(retry_s * 1000))
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.default_authority", _AUTHORITY),
        ("grpc.initial_reconnect_backoff_ms", backoff_ms),
        ("grpc.min_reconnect_backoff_ms", backoff_ms),
        ("grpc.max_reconnect_backoff_ms", backoff_ms),
        ("grpc.enable_retries", 0),
    ]
    channel = grpc.aio.insecure_channel(socket_uri(socket_path), options=options)
    try:
        await asyncio.wait_for(channel.channel_ready(), timeout=deadline_s)
    except BaseException:
        await channel.close()
        raise
    return channel


class _ReadyStub(Protocol):
    def IsReady(self, request: empty_pb2.Empty, *, timeout: float | None = None) -> Any: ...


async def wait_ready(
    stub: _ReadyStub,
    *,
    retry_s: float = 1.0,
    deadline_s: float | None = None,
) -> None:
    """Call ``IsReady`` every ``retry_s`` until the RPC succeeds (the ``ready`` value is not
    checked at start-up, as in numa v1.8.3). With ``deadline_s`` each call gets the time that
    is left as its deadline, so a server that accepts the call but never answers cannot hold
    the wait past it.

        await wait_ready(sink_pb2_grpc.SinkStub(channel), retry_s=0.05, deadline_s=10)
    """
    started = time.monotonic()
    while True:
        left = None if deadline_s is None else max(deadline_s - (time.monotonic() - started),
                                                   0.001)
        try:
            await stub.IsReady(empty_pb2.Empty(), timeout=left)
            return
        except grpc.aio.AioRpcError as exc:
            last = f"{exc.code().name}: {exc.details()}"
        if deadline_s is not None and time.monotonic() - started + retry_s > deadline_s:
            raise ConnectTimeout(
                f"IsReady did not succeed within {deadline_s} s (last error {last}); check the "
                "vertex process log for a start-up error"
            )
        await asyncio.sleep(retry_s)


class Outgoing(Protocol):
    """One message the engine sends a map or sink UDF, as the request carries it: the engine's
    own messages are these, and so is :class:`~nfbuilder.local.sourcesink.SinkDatum`."""

    @property
    def id(self) -> str: ...
    @property
    def keys(self) -> Sequence[str]: ...
    @property
    def value(self) -> bytes: ...
    @property
    def event_time_ns(self) -> int: ...
    @property
    def watermark_ns(self) -> int | None: ...
    @property
    def headers(self) -> Mapping[str, str] | None: ...
    @property
    def user_metadata(self) -> UserMetadata | None: ...


def open_call(method: Any) -> Any:
    """Start a bidi call of ``method`` (a channel's ``stream_stream`` multicallable) with the
    batch API the clients drive: ``write_many(requests)``, ``read_many()`` (the responses that
    have arrived, ``[]`` at the end), ``read``, ``done_writing``, ``cancel``. An h2 call has
    it; a grpc.aio call gets it from :class:`_GrpcCall`."""
    call = method()
    return call if hasattr(call, "write_many") else _GrpcCall(call)


class _GrpcCall:
    """A grpc.aio stream-stream call with the h2 call's batch API. grpc.aio takes one write at
    a time, so the writes of overlapping ``write_many`` calls wait behind a lock."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._lock = asyncio.Lock()

    async def write_many(self, requests: Sequence[Any]) -> None:
        async with self._lock:
            for request in requests:
                await self._call.write(request)

    async def write(self, request: Any) -> None:
        await self.write_many((request,))

    async def read(self) -> Any:
        return await self._call.read()

    async def read_many(self) -> list[Any]:
        response = await self._call.read()
        return [] if response is grpc.aio.EOF else [response]

    async def done_writing(self) -> None:
        async with self._lock:
            await self._call.done_writing()

    def cancel(self) -> bool:
        return bool(self._call.cancel())


def timestamp_pb(ns: int) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp for nanoseconds since the epoch (floor division keeps nanos >= 0)."""
    return timestamp_pb2.Timestamp(seconds=ns // _NS, nanos=ns % _NS)


def to_ns(ts: timestamp_pb2.Timestamp) -> int:
    """Nanoseconds since the epoch of a protobuf Timestamp."""
    return ts.seconds * _NS + ts.nanos


class WireMetadata(dict[str, dict[str, bytes]]):
    """User metadata as it came off the wire, shared by every message that carried the same
    bytes (a vertex marks all its outputs alike), with its protobuf form kept for the next
    request: read it, never change it."""

    __slots__ = ("pb", "raw")
    pb: metadata_pb2.Metadata
    raw: bytes  # the serialized ``pb``, as it came


_WIRE_METADATA: dict[bytes, WireMetadata] = {}


def metadata_pb(user_metadata: UserMetadata) -> metadata_pb2.Metadata:
    """A ``metadata.Metadata`` carrying only user metadata (numa restores sys metadata itself)."""
    if isinstance(user_metadata, WireMetadata):
        return user_metadata.pb
    return metadata_pb2.Metadata(user_metadata={
        group: metadata_pb2.KeyValueGroup(key_value=dict(values))
        for group, values in user_metadata.items()
    })


def metadata_bytes(user_metadata: UserMetadata | None) -> bytes | None:
    """:func:`metadata_pb` serialized (None for no user metadata), kept with a
    :class:`WireMetadata`: what :mod:`nfbuilder.local.wire` puts in a request."""
    if not user_metadata:
        return None
    if isinstance(user_metadata, WireMetadata):
        return user_metadata.raw
    return metadata_pb(user_metadata).SerializeToString()  # type: ignore[no-any-return]


def user_metadata_of(message: Any) -> dict[str, dict[str, bytes]]:
    """The user metadata of a result/record message with a ``metadata`` field, as plain dicts
    (a :class:`WireMetadata` shared by the messages that carried the same bytes)."""
    return user_metadata_from(message.metadata.SerializeToString())


def user_metadata_from(raw: bytes) -> WireMetadata:
    """The user metadata of a serialized ``metadata.Metadata`` (see :func:`user_metadata_of`);
    raises ``google.protobuf.message.DecodeError`` for bytes that are not one."""
    found = _WIRE_METADATA.get(raw)
    if found is None:
        if len(_WIRE_METADATA) >= 4096:  # bounded: only repeated metadata is worth keeping
            _WIRE_METADATA.clear()
        groups = metadata_pb2.Metadata.FromString(raw).user_metadata
        found = WireMetadata({group: dict(kv.key_value) for group, kv in groups.items()})
        found.pb = metadata_pb2.Metadata(user_metadata=groups)
        found.raw = found.pb.SerializeToString()
        _WIRE_METADATA[raw] = found
    return found


def request_fields(
    keys: Sequence[str],
    value: bytes,
    event_time_ns: int,
    watermark_ns: int | None = None,
    headers: Mapping[str, str] | None = None,
    user_metadata: UserMetadata | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The fields numa puts in a map/transformer/sink request body; absent ones are left unset.

        map_pb2.MapRequest.Request(**request_fields(("k",), b"x", event_time_ns=0))
    """
    fields: dict[str, Any] = {"keys": keys, "value": value,
                              "event_time": timestamp_pb(event_time_ns), **extra}
    if watermark_ns is not None:
        fields["watermark"] = timestamp_pb(watermark_ns)
    if headers:
        fields["headers"] = headers
    if user_metadata:
        fields["metadata"] = metadata_pb(user_metadata)
    return fields
