"""Servicer for ``sink.v1.Sink`` (primary, fallback and on-success roles alike).

Requests are collected until the client's EOT; the handler gets the whole batch; every id is
answered exactly once (SUCCESS, or FAILURE with ``err_msg`` so the engine retries it) in one
SinkResponse, followed by an EOT SinkResponse.

Example::

    sink_pb2_grpc.add_SinkServicer_to_server(SinkServicer(write_batch, errors), server)
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc.aio
from google.protobuf import empty_pb2

from nfbuilder._proto import sink_pb2, sink_pb2_grpc
from nfbuilder.runtime.messages import SinkHandler
from nfbuilder.runtime.servicers.convert import sink_datum
from nfbuilder.runtime.stream import (
    BidiStream,
    ErrorContract,
    StreamSpec,
    batches_until_eot,
    check_one_per_id,
)

_EOT = sink_pb2.SinkResponse(status=sink_pb2.TransmissionStatus(eot=True))
_Result = sink_pb2.SinkResponse.Result


class SinkServicer(sink_pb2_grpc.SinkServicer):
    """``sink.v1.Sink`` over an async :data:`SinkHandler` that writes one batch at a time.

    Example::

        async def write(batch):
            return [SinkResult(d.id, ok=True) for d in batch]

        SinkServicer(write, ErrorContract("udsink", on_fatal, prefix="UDSinkError, "))
    """

    def __init__(self, handler: SinkHandler, errors: ErrorContract) -> None:
        self._handler = handler
        handshake = sink_pb2.SinkResponse(handshake=sink_pb2.Handshake(sot=True))
        stream: BidiStream[sink_pb2.SinkRequest, sink_pb2.SinkResponse] = BidiStream(
            StreamSpec("SinkFn", handshake), self._batches, errors
        )
        self.SinkFn = stream.handle  # type: ignore[method-assign]

    async def _batches(
        self, requests: AsyncIterator[sink_pb2.SinkRequest]
    ) -> AsyncIterator[sink_pb2.SinkResponse]:
        async for batch in batches_until_eot(requests):
            if batch:
                data = [sink_datum(request) for request in batch]
                results = await self._handler(data)
                check_one_per_id([d.id for d in data], [r.id for r in results], "sink handler")
                yield sink_pb2.SinkResponse(
                    results=[
                        _Result(id=r.id, status=sink_pb2.SUCCESS)
                        if r.ok
                        else _Result(id=r.id, status=sink_pb2.FAILURE, err_msg=r.err_msg)
                        for r in results
                    ]
                )
            yield _EOT

    async def IsReady(
        self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> sink_pb2.ReadyResponse:
        return sink_pb2.ReadyResponse(ready=True)
