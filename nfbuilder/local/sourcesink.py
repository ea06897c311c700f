"""numa-like async clients for sink and user-defined-source UDFs (contract §5, §6, §15).

Both drive their bidi streams one exchange at a time, as numa does: a sink batch is sent, closed
with EOT and fully answered before the next one; a source's Read, Ack, Nack, Pending and
Partitions never overlap (numa runs them in a single actor). Import them from
:mod:`nfbuilder.local.clients`.

    sink = await SinkClient.open(channel)
    outcome = await sink.write([SinkDatum(id="v-1-0", value=b"x")])   # {"v-1-0": (True, "")}

    source = await SourceClient.open(channel, supports_nack=info.supports_nack)
    records = await source.read(500, timeout_ms=1000)
    await source.ack([(r.offset, r.partition_id) for r in records])
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import attrs
import grpc
import grpc.aio
from google.protobuf import empty_pb2

from nfbuilder._proto import sink_pb2, sink_pb2_grpc, source_pb2, source_pb2_grpc
from nfbuilder.local.rpc import (
    ClientError,
    Outgoing,
    UdfProtocolError,
    UdfStreamError,
    UserMetadata,
    metadata_bytes,
    open_call,
    stream_error,
    to_ns,
    user_metadata_of,
)
from nfbuilder.local.wire import encoded, sink_request

#: (offset bytes, partition id), as the source produced it.
OffsetRef = tuple[bytes, int]


@attrs.frozen
class SinkDatum:
    """One message handed to a sink (``id`` is the MessageID ``<vertex>-<offset>-<index>``)."""

    id: str
    value: bytes
    keys: tuple[str, ...] = ()
    event_time_ns: int = 0
    watermark_ns: int | None = None
    headers: dict[str, str] = attrs.field(factory=dict, hash=False)
    user_metadata: UserMetadata = attrs.field(factory=dict, hash=False)


@attrs.frozen
class SourceRecord:
    """One message read from a user-defined source."""

    payload: bytes
    offset: bytes
    partition_id: int
    event_time_ns: int
    keys: tuple[str, ...] = ()
    headers: dict[str, str] = attrs.field(factory=dict, hash=False)
    user_metadata: UserMetadata = attrs.field(factory=dict, hash=False)


@attrs.frozen
class Partitions:
    """A source's active partitions and, when it reports one, the total partition count."""

    partitions: tuple[int, ...]
    total: int | None = None


class _SerialStream:
    """A bidi stream driven one request/answer exchange at a time (write + read API)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._call: Any = None
        self._failure: ClientError | None = None

    async def start(self, method: Callable[[], Any], handshake: Any) -> None:
        self._call = open_call(method)
        await self.write(handshake)
        first = await self.read("the handshake reply")
        if not (first.HasField("handshake") and first.handshake.sot):
            self.broken(UdfProtocolError(
                f"{self.what}: invalid handshake response, expected handshake.sot=true as the "
                f"first reply, received {first!r}"))

    def check(self) -> None:
        if self._failure is not None:
            raise self._failure

    def broken(self, failure: ClientError) -> NoReturn:
        """Record that the stream can no longer be trusted, cancel it and raise ``failure``."""
        if self._failure is None:
            self._failure = failure
            if self._call is not None:
                self._call.cancel()
        raise failure

    async def write(self, request: Any) -> None:
        await self.write_many((request,))

    async def write_many(self, requests: Sequence[Any]) -> None:
        try:
            await self._call.write_many(requests)
        except grpc.aio.AioRpcError as exc:
            self.broken(stream_error(self.what, exc))
        except asyncio.InvalidStateError:  # grpc.aio: the server ended the call meanwhile
            self.broken(UdfStreamError(self.what, None, "the server ended the stream while the "
                                       "engine was writing to it"))

    async def read(self, expecting: str) -> Any:
        try:
            response = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            self.broken(stream_error(self.what, exc))
        if response is grpc.aio.EOF:
            self.broken(UdfStreamError(
                self.what, None, f"the server ended the stream while the engine waited for "
                f"{expecting}"))
        return response

    async def exchange(self, body: Callable[[], Any]) -> Any:
        """Run one exchange; if it is interrupted mid-way the stream is out of step: break it."""
        self.check()
        try:
            return await body()
        except asyncio.CancelledError:
            if self._failure is None:
                self._failure = UdfStreamError(
                    self.what, None, "an exchange was cancelled half-way; open a new client")
                self._call.cancel()
            raise

    async def close(self) -> None:
        if self._call is not None:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await self._call.done_writing()
            self._call.cancel()
        if self._failure is None:
            self._failure = UdfStreamError(self.what, None, "closed by the engine")


class SinkClient:
    """The ``sink.v1.Sink/SinkFn`` driver: batches closed by EOT, one result per id.

        sink = await SinkClient.open(channel, name="out")
        outcome = await sink.write(batch)   # {id: (ok, err_msg)}; FAILURE ids are to be retried
    """

    def __init__(self, channel: grpc.aio.Channel, *, name: str = "sink") -> None:
        self.stub = sink_pb2_grpc.SinkStub(channel)
        # the data requests are written as bytes (local.wire), the handshake and EOT are not
        self._sink_fn = channel.stream_stream(
            "/sink.v1.Sink/SinkFn", request_serializer=encoded,
            response_deserializer=sink_pb2.SinkResponse.FromString)
        self._stream = _SerialStream(f"{name} SinkFn stream")
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, channel: grpc.aio.Channel, *, name: str = "sink") -> SinkClient:
        """Open the SinkFn stream and complete the handshake."""
        client = cls(channel, name=name)
        handshake = sink_pb2.SinkRequest(handshake=sink_pb2.Handshake(sot=True))
        await client._stream.start(client._sink_fn, handshake)
        return client

    async def write(self, batch: Sequence[Outgoing]) -> dict[str, tuple[bool, str]]:
        """Send one batch then EOT; return ``{id: (ok, err_msg)}`` once the sink's EOT arrives.

        Raises UdfProtocolError when the ids do not match one-to-one (missing, duplicate or
        unknown) or the sink answers a status the embedded engine cannot honour.
        """
        ids = [datum.id for datum in batch]
        if not ids:
            raise ValueError("SinkClient.write: empty batch; numa never sends an empty batch")
        if len(set(ids)) != len(ids):
            raise ValueError(f"SinkClient.write: duplicate ids in the batch: {_dupes(ids)}")
        async with self._lock:
            return await self._stream.exchange(lambda: self._write(batch, set(ids)))

    async def _write(
        self, batch: Sequence[Outgoing], ids: set[str]
    ) -> dict[str, tuple[bool, str]]:
        stream = self._stream
        await stream.write_many([
            *[sink_request(d.id, d.keys, d.value, d.event_time_ns, d.watermark_ns, d.headers,
                           metadata_bytes(d.user_metadata)) for d in batch],
            _SINK_EOT])
        outcome: dict[str, tuple[bool, str]] = {}
        while True:
            response = await stream.read("sink results and their EOT")
            for result in response.results:
                rid = result.id
                if rid not in ids:
                    stream.broken(UdfProtocolError(
                        f"{stream.what}: result for unknown id {rid!r}; every result must "
                        "echo the id of a request in the batch"))
                if rid in outcome:
                    stream.broken(UdfProtocolError(
                        f"{stream.what}: duplicate result for id {rid!r}"))
                outcome[rid] = _OK if result.status == _SUCCESS else _sink_outcome(stream, result)
            if response.HasField("status") and response.status.eot:
                break
        missing = ids - outcome.keys()
        if missing:
            stream.broken(UdfProtocolError(
                f"UDF_PARTIAL_RESPONSE(udsink): {stream.what} sent EOT after {len(outcome)} of "
                f"{len(ids)} results; missing ids {sorted(missing)[:5]}"))
        return outcome

    async def close(self) -> None:
        """Half-close and cancel the stream (the channel stays open)."""
        await self._stream.close()


class SourceClient:
    """The ``source.v1.Source`` driver: ReadFn + AckFn streams and the unary calls, serialised.

    ``supports_nack`` comes from the server-info file; when it is false numa silently skips
    NackFn, and so does :meth:`nack` (it returns False).

        source = await SourceClient.open(channel, supports_nack=True)
        records = await source.read(500, timeout_ms=1000)
    """

    def __init__(self, channel: grpc.aio.Channel, *, supports_nack: bool = True,
                 name: str = "source") -> None:
        self.stub = source_pb2_grpc.SourceStub(channel)
        self.name = name
        self.supports_nack = supports_nack
        self._reads = _SerialStream(f"{name} ReadFn stream")
        self._acks = _SerialStream(f"{name} AckFn stream")
        self._actor = asyncio.Lock()  # numa's single source actor: never two operations at once

    @classmethod
    async def open(cls, channel: grpc.aio.Channel, *, supports_nack: bool = True,
                   name: str = "source") -> SourceClient:
        """Open ReadFn and AckFn and complete both handshakes."""
        client = cls(channel, supports_nack=supports_nack, name=name)
        await client._reads.start(client.stub.ReadFn, source_pb2.ReadRequest(
            handshake=source_pb2.Handshake(sot=True)))
        await client._acks.start(client.stub.AckFn, source_pb2.AckRequest(
            handshake=source_pb2.Handshake(sot=True)))
        return client

    async def read(self, num_records: int = 500, timeout_ms: int = 1000) -> list[SourceRecord]:
        """One ReadRequest; the records streamed back until the server's EOT (may be empty)."""
        async with self._actor:
            return await self._reads.exchange(lambda: self._read(num_records, timeout_ms))

    async def _read(self, num_records: int, timeout_ms: int) -> list[SourceRecord]:
        stream = self._reads
        await stream.write(source_pb2.ReadRequest(request=source_pb2.ReadRequest.Request(
            num_records=num_records, timeout_in_ms=timeout_ms)))
        records: list[SourceRecord] = []
        while True:
            response = await stream.read("read results and their EOT")
            if response.status.eot:
                return records
            if not response.HasField("result"):
                stream.broken(UdfProtocolError(
                    f"{stream.what}: Empty message in response: a non-EOT ReadResponse must "
                    f"carry a result, received {response!r}"))
            records.append(_source_record(stream, response.result))

    async def ack(self, offsets: Sequence[OffsetRef]) -> None:
        """One AckRequest with every offset; waits for exactly one AckResponse."""
        if not offsets:
            raise ValueError("SourceClient.ack: no offsets; numa never sends an empty ack")
        request = source_pb2.AckRequest(request=source_pb2.AckRequest.Request(
            offsets=[source_pb2.Offset(offset=o, partition_id=p) for o, p in offsets]))

        async def exchange() -> None:
            await self._acks.write(request)
            await self._acks.read("the AckResponse")

        async with self._actor:
            await self._acks.exchange(exchange)

    async def nack(self, offsets: Sequence[OffsetRef]) -> bool:
        """NackFn with one Request per offset (v1.8.2+ shape); False when skipped (no support)."""
        if not self.supports_nack or not offsets:
            return False
        request = source_pb2.NackRequest(request=[
            source_pb2.NackRequest.Request(offsets=[source_pb2.Offset(offset=o, partition_id=p)])
            for o, p in offsets])
        async with self._actor:
            await self._unary("NackFn", self.stub.NackFn, request)
        return True

    async def pending(self) -> int:
        """The source's pending count; -1 when it reports "unavailable" (any negative value)."""
        async with self._actor:
            response = await self._unary("PendingFn", self.stub.PendingFn, empty_pb2.Empty())
        return max(-1, int(response.result.count))

    async def partitions(self) -> Partitions:
        """The active partitions (and the total, when the source reports it)."""
        async with self._actor:
            response = await self._unary("PartitionsFn", self.stub.PartitionsFn,
                                         empty_pb2.Empty())
        result = response.result
        total = result.total_partitions if result.HasField("total_partitions") else None
        return Partitions(partitions=tuple(result.partitions), total=total)

    async def _unary(self, method: str, call: Any, request: Any) -> Any:
        try:
            return await call(request)
        except grpc.aio.AioRpcError as exc:
            raise stream_error(f"{self.name} {method}", exc) from None

    async def close(self) -> None:
        """Half-close and cancel both streams (the channel stays open)."""
        await self._reads.close()
        await self._acks.close()


_SINK_EOT = sink_pb2.SinkRequest(status=sink_pb2.TransmissionStatus(eot=True))
_SUCCESS = sink_pb2.SUCCESS
_OK = (True, "")


def _sink_outcome(stream: _SerialStream, result: Any) -> tuple[bool, str]:
    if result.status == sink_pb2.SUCCESS:
        return True, ""
    if result.status == sink_pb2.FAILURE:
        return False, result.err_msg
    name = sink_pb2.Status.Name(result.status) if result.status in sink_pb2.Status.values() \
        else str(result.status)
    stream.broken(UdfProtocolError(
        f"{stream.what}: id {result.id!r} answered status {name}; the embedded engine has no "
        "fallback, on-success or serving sink, so only SUCCESS and FAILURE are accepted"))


def _source_record(stream: _SerialStream, result: Any) -> SourceRecord:
    if not result.HasField("offset") or not result.offset.offset:
        stream.broken(UdfProtocolError(
            f"{stream.what}: user code error: a read result has no offset (or an empty one); "
            f"received {result!r}"))
    if not result.HasField("event_time"):
        stream.broken(UdfProtocolError(
            f"{stream.what}: a read result has no event_time (numa panics without it); offset "
            f"{result.offset.offset!r}"))
    return SourceRecord(
        payload=result.payload, offset=result.offset.offset,
        partition_id=result.offset.partition_id, event_time_ns=to_ns(result.event_time),
        keys=tuple(result.keys), headers=dict(result.headers),
        user_metadata=user_metadata_of(result) if result.HasField("metadata") else {})


def _dupes(ids: Sequence[str]) -> list[str]:
    return sorted(i for i, n in Counter(ids).items() if n > 1)[:5]
