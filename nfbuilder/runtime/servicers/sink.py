"""Servicer for ``sink.v1.Sink`` (primary, fallback and on-success roles alike).

Requests are collected until the client's EOT; the handler gets the whole batch; every id is
answered exactly once (SUCCESS, or FAILURE with ``err_msg`` so the engine retries it) in one
SinkResponse, followed by an EOT SinkResponse.

This is a sink vertex's per-message path, so it stays thin: each request becomes a
:class:`Datum` that reads only what the handler looks at (a TCP sink reads the id and the
value), and the responses are written as protobuf bytes directly (:func:`results_bytes`),
which is why the servicer is registered with :func:`add_to_server`, not the generated function.

Example::

    add_to_server(SinkServicer(write_batch, errors), server)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import grpc.aio
from google.protobuf import empty_pb2

from nfbuilder._proto import sink_pb2, sink_pb2_grpc
from nfbuilder.runtime.messages import Datum, SinkHandler, SinkResult, UserMetadata
from nfbuilder.runtime.protowire import SMALL, field
from nfbuilder.runtime.servicers.convert import read_user_metadata, to_ns
from nfbuilder.runtime.stream import BidiStream, ErrorContract, StreamSpec, check_one_per_id

_HANDSHAKE = sink_pb2.SinkResponse(handshake=sink_pb2.Handshake(sot=True)).SerializeToString()
_EOT = sink_pb2.SinkResponse(status=sink_pb2.TransmissionStatus(eot=True)).SerializeToString()


class SinkServicer(sink_pb2_grpc.SinkServicer):
    """``sink.v1.Sink`` over an async :data:`SinkHandler` that writes one batch at a time.

    ``SinkFn`` yields serialized SinkResponses: register it with :func:`add_to_server`.

    Example::

        async def write(batch):
            return [SinkResult(d.id, ok=True) for d in batch]

        SinkServicer(write, ErrorContract("udsink", on_fatal, prefix="UDSinkError, "))
    """

    def __init__(self, handler: SinkHandler, errors: ErrorContract) -> None:
        self._handler = handler
        stream: BidiStream[sink_pb2.SinkRequest, bytes] = BidiStream.batches(
            StreamSpec("SinkFn", _HANDSHAKE), self._write, _EOT, errors
        )
        self.SinkFn = stream.handle  # type: ignore[method-assign]

    async def _write(self, batch: list[sink_pb2.SinkRequest]) -> list[bytes]:
        """One batch: the handler's results, checked one per id, as one SinkResponse."""
        data = [_SinkDatum(request.request) for request in batch]
        results = await self._handler(data)
        check_one_per_id([d.id for d in data], [r.id for r in results], "sink handler")
        return [results_bytes(results)]

    async def IsReady(
        self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> sink_pb2.ReadyResponse:
        return sink_pb2.ReadyResponse(ready=True)


def add_to_server(servicer: SinkServicer, server: Any) -> None:
    """Register ``servicer`` on a grpc server (or the h2 transport's recorder), as the
    generated ``add_SinkServicer_to_server`` does, except that SinkFn's responses are the bytes
    the servicer serialized itself."""
    handlers = {
        "SinkFn": grpc.stream_stream_rpc_method_handler(
            servicer.SinkFn, request_deserializer=sink_pb2.SinkRequest.FromString,
            response_serializer=_serialized),
        "IsReady": grpc.unary_unary_rpc_method_handler(
            servicer.IsReady, request_deserializer=empty_pb2.Empty.FromString,
            response_serializer=sink_pb2.ReadyResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("sink.v1.Sink",
                                                                          handlers),))
    server.add_registered_method_handlers("sink.v1.Sink", handlers)


def _serialized(response: bytes) -> bytes:
    return response


class _SinkDatum(Datum):
    """A sink request as a :class:`Datum`: the id and the value are read at once, every
    other field from the request only when asked for (a TCP sink never asks)."""

    __slots__ = ("_request",)
    _request: Any  # sink_pb2.SinkRequest.Request

    def __init__(self, request: Any) -> None:
        _set_request(self, request)
        _set_id(self, request.id)
        _set_value(self, request.value)

    @property
    def keys(self) -> tuple[str, ...]:
        keys = self._request.keys
        return tuple(keys) if keys else ()

    @property
    def event_time_ns(self) -> int:
        return to_ns(self._request.event_time)

    @property
    def watermark_ns(self) -> int | None:
        request = self._request
        return to_ns(request.watermark) if request.HasField("watermark") else None

    @property
    def headers(self) -> Mapping[str, str]:
        return self._request.headers  # type: ignore[no-any-return]

    @property
    def user_metadata(self) -> UserMetadata:
        return read_user_metadata(self._request)


# The slots' own setters: a frozen attrs class refuses assignment (object.__setattr__ is slower).
_set_request = _SinkDatum.__dict__["_request"].__set__
_set_id = Datum.__dict__["id"].__set__
_set_value = Datum.__dict__["value"].__set__


def results_bytes(results: Sequence[SinkResult]) -> bytes:
    """A serialized SinkResponse carrying one Result per ``results`` (SUCCESS, or FAILURE with
    the result's ``err_msg``), written directly: what the generated classes would serialize.

    Example::

        results_bytes([SinkResult("v-1-0", ok=True)])    # b'\\n\\x07\\n\\x05v-1-0'
    """
    # SinkResponse.results is field 1; in each Result: id (1), status (2), err_msg (3), each
    # omitted when empty / SUCCESS, as proto3 does
    parts: list[bytes] = []
    add = parts.append
    for result in results:
        ident = result.id.encode()
        if result.ok and len(ident) < len(_SUCCESS):  # the usual result: a short id, SUCCESS
            add(_SUCCESS[len(ident)])
            add(ident)
            continue
        body = field(b"\x0a", ident) if ident else b""
        if not result.ok:
            body += b"\x10\x01"  # status FAILURE
            if result.err_msg:
                body += field(b"\x1a", result.err_msg.encode())
        add(field(b"\x0a", body))
    return b"".join(parts)


#: what precedes a SUCCESS result's id of n < 126 bytes (the Result's and the id's tags and
#: one-byte lengths; an empty id is not written)
_SUCCESS = [b"\x0a\x00"] + [b"\x0a" + SMALL[n + 2] + b"\x0a" + SMALL[n] for n in range(1, 126)]
