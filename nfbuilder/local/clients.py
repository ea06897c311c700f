"""numa-like async clients for map and source-transformer UDFs (contract §3, §4, §15).

Each client owns ONE long-lived bidi stream, opened as numa opens it: the handshake request is
queued before the call starts and the first reply must be a handshake with ``sot=true``. Requests
are then sent as they come, with at most ``max_in_flight`` outstanding, and replies are matched
to callers by id in any order. When the stream fails, every pending call fails with the same
:class:`UdfStreamError` (numa v1.8.3 then exits; the embedded engine restarts the vertex).

    channel = await connect(sock_dir / "map.sock", retry_s=0.05)   # or transport="h2"
    await wait_ready(map_pb2_grpc.MapStub(channel), retry_s=0.05)
    mapper = await MapClient.open(channel, max_in_flight=500)
    results = await mapper.map("v-0-0", (), b"hello", event_time_ns=0)

The clients are written once, against the part of ``grpc.aio.Channel`` the generated stubs use;
``connect`` gives either grpcio's channel or the lean :class:`~nfbuilder.local.h2client.H2Channel`
(``transport="h2"``), and the clients cannot tell them apart.

The sink and source clients live in :mod:`nfbuilder.local.sourcesink`; everything is re-exported
here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import attrs
import grpc
import grpc.aio

from nfbuilder._proto import map_pb2, map_pb2_grpc, sourcetransform_pb2, sourcetransform_pb2_grpc
from nfbuilder.local.rpc import (
    Channel,
    ClientError,
    ConnectTimeout,
    UdfProtocolError,
    UdfStreamError,
    UserMetadata,
    connect,
    metadata_bytes,
    request_fields,
    stream_error,
    to_ns,
    user_metadata_of,
    wait_ready,
)
from nfbuilder.local.sourcesink import (
    Partitions,
    SinkClient,
    SinkDatum,
    SourceClient,
    SourceRecord,
)
from nfbuilder.local.wire import encoded, map_request

__all__ = [
    "Channel", "ClientError", "ConnectTimeout", "MapClient", "Partitions", "Result", "SinkClient",
    "SinkDatum", "SourceClient", "SourceRecord", "TransformClient", "TransformResult",
    "UdfProtocolError", "UdfStreamError", "connect", "wait_ready",
]

_log = logging.getLogger(__name__)
_CLOSE = object()  # ends the request iterator: the client half-closes the stream

Resp = TypeVar("Resp")


@attrs.frozen
class Result:
    """One map output message (event time and headers are inherited from the parent)."""

    value: bytes
    keys: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    user_metadata: UserMetadata = attrs.field(factory=dict, hash=False)


@attrs.frozen
class TransformResult:
    """One source-transformer output message; the transformer always assigns its event time."""

    value: bytes
    event_time_ns: int
    keys: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    user_metadata: UserMetadata = attrs.field(factory=dict, hash=False)


class _Correlator(Generic[Resp]):
    """One bidi stream whose replies carry the request id (map unary mode, transformer)."""

    def __init__(self, what: str, max_in_flight: int) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, received {max_in_flight}")
        self._what = what
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._pending: dict[str, asyncio.Future[Resp]] = {}
        self._slots = asyncio.Semaphore(max_in_flight)
        self._failure: ClientError | None = None
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._eot: asyncio.Future[None] | None = None  # batch mode: the EOT awaited

    async def start(self, method: Callable[[AsyncIterator[Any]], Any], handshake: Any) -> None:
        # numa enqueues the handshake before it starts the call, so it is the first frame sent.
        self._queue.put_nowait(handshake)
        self._call = method(self._requests())
        try:
            first = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise stream_error(f"{self._what} handshake", exc) from None
        if first is grpc.aio.EOF or not (first.HasField("handshake") and first.handshake.sot):
            self._call.cancel()
            got = "end of stream" if first is grpc.aio.EOF else repr(first)
            raise UdfProtocolError(
                f"{self._what}: invalid handshake response, expected handshake.sot=true as the "
                f"first reply, received {got}"
            )
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    async def _requests(self) -> AsyncIterator[Any]:
        while True:
            item = await self._queue.get()
            if item is _CLOSE:
                return
            yield item

    async def call(self, id: str, request: Any) -> Resp:
        """Send one request and wait for the reply with the same id."""
        async with self._slots:
            if self._failure is not None:
                raise self._failure
            if id in self._pending:
                raise ValueError(f"{self._what}: request id {id!r} is already in flight; "
                                 "ids must be unique among outstanding requests")
            future: asyncio.Future[Resp] = asyncio.get_running_loop().create_future()
            self._pending[id] = future
            self._queue.put_nowait(request)
            try:
                return await future
            finally:
                if self._pending.get(id) is future:  # cancelled: forget the waiter
                    del self._pending[id]

    async def call_batch(self, ids: Sequence[str], requests: Sequence[Any], eot: Any) -> list[Resp]:
        """Batch mode: send every request, then ``eot``; wait for the reply to each id and then
        for the server's EOT (an EOT before every id is answered is fatal, as in numa)."""
        if self._failure is not None:
            raise self._failure
        loop = asyncio.get_running_loop()
        futures = []
        for id, request in zip(ids, requests, strict=True):
            future: asyncio.Future[Resp] = loop.create_future()
            self._pending[id] = future
            futures.append(future)
            self._queue.put_nowait(request)
        self._eot = loop.create_future()
        self._queue.put_nowait(eot)
        eot_future = self._eot
        try:
            results = [await f for f in futures]
            await eot_future
            return results
        except BaseException:
            # the batch fails as one: its other waiters' errors are the same, seen here
            waiters: list[asyncio.Future[Any]] = [*futures, eot_future]
            for f in waiters:
                if f.done() and not f.cancelled():
                    f.exception()
            raise
        finally:
            for id in ids:
                self._pending.pop(id, None)
            self._eot = None

    async def _read_loop(self) -> None:
        failure: ClientError = UdfStreamError(self._what, None, "closed by the engine")
        try:
            while True:
                response = await self._call.read()
                if response is grpc.aio.EOF:
                    failure = UdfStreamError(
                        self._what, None,
                        f"the server ended the stream with {len(self._pending)} request(s) pending")
                    break
                if self._eot is not None and response.HasField("status") \
                        and response.status.eot:
                    if self._pending:
                        failure = UdfProtocolError(
                            f"UDF_PARTIAL_RESPONSE(batch_map): {self._what} sent EOT with "
                            f"{len(self._pending)} id(s) of the batch unanswered")
                        break
                    self._eot.set_result(None)
                    continue
                future = self._pending.pop(response.id, None)
                if future is None or future.done():
                    # numa logs and ignores a reply for an unknown id.
                    _log.warning("%s: ignoring a reply for unknown id %r", self._what, response.id)
                    continue
                future.set_result(response)
        except grpc.aio.AioRpcError as exc:
            failure = stream_error(self._what, exc)
        finally:
            self._fail(failure)

    def _fail(self, failure: ClientError) -> None:
        if self._failure is None:
            self._failure = failure
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(self._failure)
        if self._eot is not None and not self._eot.done():
            self._eot.set_exception(self._failure)

    async def close(self) -> None:
        """Half-close the stream, cancel it and fail whatever is still pending."""
        self._queue.put_nowait(_CLOSE)
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        self._fail(UdfStreamError(self._what, None, "closed by the engine"))


class MapClient:
    """The ``map.v1.Map/MapFn`` driver (one stream, id-correlated replies): unary mode
    (``map``, up to ``max_in_flight`` at once) or batch mode (``map_batch``: a batch closed by
    EOT, the next one sent when all its ids are answered: how the engine drives ordered
    vertices, whose servers run in batch mode).

        mapper = await MapClient.open(channel, max_in_flight=500)
        outs = await mapper.map("v-7-0", ("k",), b"x", event_time_ns=t, watermark_ns=None)
        await mapper.close()
    """

    def __init__(self, channel: Channel, *, max_in_flight: int = 500,
                 name: str = "map") -> None:
        self.stub = map_pb2_grpc.MapStub(channel)
        # the data requests are written as bytes (local.wire), the handshake and EOT are not
        self._map_fn = channel.stream_stream(
            "/map.v1.Map/MapFn", request_serializer=encoded,
            response_deserializer=map_pb2.MapResponse.FromString)
        self._stream: _Correlator[Any] = _Correlator(f"{name} MapFn stream", max_in_flight)

    @classmethod
    async def open(cls, channel: Channel, *, max_in_flight: int = 500,
                   name: str = "map") -> MapClient:
        """Open the MapFn stream and complete the handshake."""
        client = cls(channel, max_in_flight=max_in_flight, name=name)
        handshake = map_pb2.MapRequest(handshake=map_pb2.Handshake(sot=True))
        await client._stream.start(client._map_fn, handshake)
        return client

    async def map(
        self,
        id: str,
        keys: Sequence[str],
        value: bytes,
        event_time_ns: int,
        watermark_ns: int | None = None,
        headers: Mapping[str, str] | None = None,
        user_metadata: UserMetadata | None = None,
    ) -> list[Result]:
        """Map one message; returns its results (an empty list means "consumed, no output")."""
        request = map_request(id, keys, value, event_time_ns, watermark_ns, headers,
                              metadata_bytes(user_metadata))
        return _results(await self._stream.call(id, request))

    async def map_batch(self, items: Sequence[tuple[str, Sequence[str], bytes, int, int | None,
                                                    Mapping[str, str] | None,
                                                    UserMetadata | None]]) -> list[list[Result]]:
        """Batch mode: map ``(id, keys, value, event_time_ns, watermark_ns, headers,
        user_metadata)`` items as one batch; returns each item's results, in item order."""
        requests = [map_request(id, keys, value, t, w, headers, metadata_bytes(meta))
                    for id, keys, value, t, w, headers, meta in items]
        responses = await self._stream.call_batch([i[0] for i in items], requests, _MAP_EOT)
        return [_results(response) for response in responses]

    async def close(self) -> None:
        """End the stream (the channel stays open; the caller closes it)."""
        await self._stream.close()


_MAP_EOT = map_pb2.MapRequest(status=map_pb2.TransmissionStatus(eot=True))


def _results(response: map_pb2.MapResponse) -> list[Result]:
    """A map response's results (an empty list: consumed, no output)."""
    return [Result(value=r.value, keys=tuple(r.keys), tags=tuple(r.tags),
                   user_metadata=user_metadata_of(r) if r.HasField("metadata") else {})
            for r in response.results]


class TransformClient:
    """The ``sourcetransformer.v1.SourceTransform/SourceTransformFn`` driver.

    Request ids are the source offset strings (``<base64 offset>-<partition>``). numa refuses an
    empty result list (``UDF_PARTIAL_RESPONSE(transformer)``) and a result without event time;
    both raise :class:`UdfProtocolError` here.

        transformer = await TransformClient.open(channel)
        outs = await transformer.transform("b2Zm-0", (), b"raw", event_time_ns=t)
        outs[0].event_time_ns
    """

    def __init__(self, channel: Channel, *, max_in_flight: int = 500,
                 name: str = "transformer") -> None:
        self.stub = sourcetransform_pb2_grpc.SourceTransformStub(channel)
        self._what = f"{name} SourceTransformFn stream"
        self._stream: _Correlator[Any] = _Correlator(self._what, max_in_flight)

    @classmethod
    async def open(cls, channel: Channel, *, max_in_flight: int = 500,
                   name: str = "transformer") -> TransformClient:
        """Open the SourceTransformFn stream and complete the handshake."""
        client = cls(channel, max_in_flight=max_in_flight, name=name)
        handshake = sourcetransform_pb2.SourceTransformRequest(
            handshake=sourcetransform_pb2.Handshake(sot=True))
        await client._stream.start(client.stub.SourceTransformFn, handshake)
        return client

    async def transform(
        self,
        id: str,
        keys: Sequence[str],
        value: bytes,
        event_time_ns: int,
        watermark_ns: int | None = None,
        headers: Mapping[str, str] | None = None,
        user_metadata: UserMetadata | None = None,
    ) -> list[TransformResult]:
        """Transform one source message; returns at least one result, each with an event time."""
        fields = request_fields(keys, value, event_time_ns, watermark_ns, headers, user_metadata,
                                id=id)
        request = sourcetransform_pb2.SourceTransformRequest(
            request=sourcetransform_pb2.SourceTransformRequest.Request(**fields))
        response = await self._stream.call(id, request)
        if not response.results:
            raise UdfProtocolError(
                f"UDF_PARTIAL_RESPONSE(transformer): {self._what} answered id {id!r} with an "
                "empty results list; a transformer must return at least one result (tag it "
                "DROP to filter the message out)"
            )
        out = []
        for index, r in enumerate(response.results):
            if not r.HasField("event_time"):
                raise UdfProtocolError(
                    f"{self._what}: result {index} for id {id!r} has no event_time; every "
                    "transformer result must carry one (numa panics without it)"
                )
            out.append(TransformResult(
                value=r.value, event_time_ns=to_ns(r.event_time), keys=tuple(r.keys),
                tags=tuple(r.tags),
                user_metadata=user_metadata_of(r) if r.HasField("metadata") else {}))
        return out

    async def close(self) -> None:
        """End the stream (the channel stays open; the caller closes it)."""
        await self._stream.close()
