"""Servicer for ``source.v1.Source`` over a :class:`~nfbuilder.runtime.messages.SourceHandler`.

Read: each ReadRequest gets the handler's messages, one ReadResponse each, then one EOT
response. Ack: exactly one AckResponse per AckRequest. Nack, Pending and Partitions are unary.

Example::

    source_pb2_grpc.add_SourceServicer_to_server(SourceServicer(handler, errors), server)
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc.aio
from google.protobuf import empty_pb2

from nfbuilder._proto import source_pb2, source_pb2_grpc
from nfbuilder.runtime.messages import SourceHandler, SourceMessage
from nfbuilder.runtime.servicers.convert import to_timestamp, write_metadata
from nfbuilder.runtime.stream import BidiStream, ErrorContract, StreamSpec

_Status = source_pb2.ReadResponse.Status
_EOT = source_pb2.ReadResponse(status=_Status(eot=True, code=_Status.SUCCESS))
_ACKED = source_pb2.AckResponse(result=source_pb2.AckResponse.Result(success=empty_pb2.Empty()))


def _read_result(message: SourceMessage) -> source_pb2.ReadResponse:
    if not message.offset:
        # numa rejects an empty offset with a fatal "user code error"; say who is at fault here.
        raise ValueError(
            f"source handler returned a message with an empty offset (payload "
            f"{message.payload[:40]!r}); every SourceMessage needs non-empty offset bytes"
        )
    return source_pb2.ReadResponse(
        result=source_pb2.ReadResponse.Result(
            payload=message.payload,
            offset=source_pb2.Offset(offset=message.offset, partition_id=message.partition_id),
            event_time=to_timestamp(message.event_time_ns),
            keys=message.keys,
            headers=message.headers,
            metadata=write_metadata(message.user_metadata),
        )
    )


def _offsets(offsets: object) -> list[tuple[bytes, int]]:
    return [(o.offset, o.partition_id) for o in offsets]  # type: ignore[attr-defined]


class SourceServicer(source_pb2_grpc.SourceServicer):
    """``source.v1.Source``: the engine never overlaps two calls, so neither do we.

    Example::

        SourceServicer(ListSource([b"a", b"b"]), ErrorContract("udsource", on_fatal))
    """

    def __init__(self, handler: SourceHandler, errors: ErrorContract) -> None:
        self._handler = handler
        self._errors = errors

        read_handshake = source_pb2.ReadResponse(
            status=_Status(eot=False, code=_Status.SUCCESS),
            handshake=source_pb2.Handshake(sot=True),
        )
        ack_handshake = source_pb2.AckResponse(
            result=source_pb2.AckResponse.Result(success=empty_pb2.Empty()),
            handshake=source_pb2.Handshake(sot=True),
        )
        read: BidiStream[source_pb2.ReadRequest, source_pb2.ReadResponse] = BidiStream(
            StreamSpec("ReadFn", read_handshake), self._read, errors
        )
        ack: BidiStream[source_pb2.AckRequest, source_pb2.AckResponse] = BidiStream(
            StreamSpec("AckFn", ack_handshake), self._ack, errors
        )
        self.ReadFn = read.handle  # type: ignore[method-assign]
        self.AckFn = ack.handle  # type: ignore[method-assign]

    async def _read(
        self, requests: AsyncIterator[source_pb2.ReadRequest]
    ) -> AsyncIterator[source_pb2.ReadResponse]:
        async for request in requests:
            wanted = request.request
            messages = await self._handler.read(
                int(wanted.num_records), wanted.timeout_in_ms / 1000.0
            )
            for message in messages:
                yield _read_result(message)
            yield _EOT

    async def _ack(
        self, requests: AsyncIterator[source_pb2.AckRequest]
    ) -> AsyncIterator[source_pb2.AckResponse]:
        async for request in requests:
            await self._handler.ack(_offsets(request.request.offsets))
            yield _ACKED

    async def NackFn(
        self, request: source_pb2.NackRequest, context: grpc.aio.ServicerContext
    ) -> source_pb2.NackResponse:
        # v1.8.2+ sends one Request per offset; older engines one Request with all of them.
        offsets = [pair for entry in request.request for pair in _offsets(entry.offsets)]
        await self._errors.guard(context, self._handler.nack(offsets))
        return source_pb2.NackResponse(
            result=source_pb2.NackResponse.Result(success=empty_pb2.Empty())
        )

    async def PendingFn(
        self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> source_pb2.PendingResponse:
        count = await self._errors.guard(context, self._handler.pending())
        return source_pb2.PendingResponse(result=source_pb2.PendingResponse.Result(count=count))

    async def PartitionsFn(
        self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> source_pb2.PartitionsResponse:
        partitions = list(await self._errors.guard(context, self._handler.partitions()))
        return source_pb2.PartitionsResponse(
            result=source_pb2.PartitionsResponse.Result(
                partitions=partitions, total_partitions=len(partitions)
            )
        )

    async def IsReady(
        self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> source_pb2.ReadyResponse:
        return source_pb2.ReadyResponse(ready=True)
