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
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import attrs
import grpc
import grpc.aio

from nfbuilder._proto import map_pb2, sourcetransform_pb2
from nfbuilder.local.rpc import (
    Channel,
    ClientError,
    ConnectTimeout,
    Outgoing,
    UdfProtocolError,
    UdfStreamError,
    UserMetadata,
    connect,
    metadata_bytes,
    open_call,
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
from nfbuilder.local.wire import (
    Result,
    WireError,
    encoded,
    map_request,
    map_response,
    transform_request,
)

__all__ = [
    "Channel", "ClientError", "ConnectTimeout", "MapClient", "Partitions", "Result", "SinkClient",
    "SinkDatum", "SourceClient", "SourceRecord", "TransformClient", "TransformResult",
    "UdfProtocolError", "UdfStreamError", "connect", "wait_ready",
]

_log = logging.getLogger(__name__)

Resp = TypeVar("Resp")


@attrs.frozen
class TransformResult:
    """One source-transformer output message; the transformer always assigns its event time."""

    value: bytes
    event_time_ns: int
    keys: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    user_metadata: UserMetadata = attrs.field(factory=dict, hash=False)


class _Group:
    """Requests sent together whose replies are gathered by id, in the order of the requests:
    unary calls (one or many), or a batch-mode batch (``eot``: ``done`` waits for the server's
    EOT as well)."""

    __slots__ = ("done", "eot", "left", "replies")

    def __init__(self, n: int, loop: asyncio.AbstractEventLoop, *, eot: bool = False) -> None:
        self.replies: list[Any] = [None] * n
        self.left = n
        self.eot = eot
        self.done: asyncio.Future[list[Any]] = loop.create_future()


class _Slots:
    """At most ``size`` requests in flight: a slot is taken before a request is sent and given
    back when its reply comes (or the call gives up on it)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"max_in_flight must be >= 1, received {size}")
        self.size = self.free = size
        # set when slots come back; each waiter has its own future in it, so one that is
        # cancelled leaves the others waiting
        self._room = asyncio.Event()

    async def take(self, n: int) -> None:
        """Take ``n`` (at most ``size``) slots, waiting until they are free."""
        while self.free < n:
            self._room.clear()  # only slots given back from now on wake this waiter
            await self._room.wait()
        self.free -= n

    def give(self, n: int) -> None:
        self.free += n
        self._room.set()


class _Correlator(Generic[Resp]):
    """One bidi stream whose replies carry the request id (map unary and batch mode,
    transformer). Requests are written as they come, many at once; one reader task reads
    whatever has arrived and hands each reply to the group that sent it."""

    def __init__(self, what: str, max_in_flight: int) -> None:
        self._what = what
        #: request id -> (its group, its index there), until the reply comes
        self._pending: dict[str, tuple[_Group, int]] = {}
        self._slots = _Slots(max_in_flight)
        self._failure: ClientError | None = None
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._batch: _Group | None = None  # batch mode: the batch waiting for its EOT

    async def start(self, method: Callable[[], Any], handshake: Any,
                    accepted: Callable[[Any], bool]) -> None:
        """Open the stream with ``handshake``; ``accepted(first_reply)``: whether the reply is
        the handshake with ``sot=true``."""
        # numa enqueues the handshake before it starts the call, so it is the first frame sent.
        self._call = open_call(method)
        await self._send((handshake,))
        try:
            first = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise stream_error(f"{self._what} handshake", exc) from None
        if first is grpc.aio.EOF or not accepted(first):
            self._call.cancel()
            got = "end of stream" if first is grpc.aio.EOF else repr(first)
            raise UdfProtocolError(
                f"{self._what}: invalid handshake response, expected handshake.sot=true as the "
                f"first reply, received {got}"
            )
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    async def _send(self, requests: Sequence[Any]) -> None:
        # a call that has ended: the reader fails every waiter with how it ended
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await self._call.write_many(requests)

    def _register(self, group: _Group, ids: Sequence[str], first: int) -> None:
        """Wait for the replies to ``ids`` (``group``'s, from its index ``first`` on); all of
        them or, when one is already waited for, none."""
        if self._failure is not None:
            raise self._failure
        pending = self._pending
        if len(ids) > 1 and len(set(ids)) != len(ids) or any(id in pending for id in ids):
            raise ValueError(f"{self._what}: a request id is already in flight; ids must be "
                             "unique among outstanding requests")
        for i, id in enumerate(ids, first):
            pending[id] = (group, i)

    def _forget(self, group: _Group, ids: Sequence[str]) -> int:
        """Drop the ids of ``group`` still waiting for a reply (the caller gave up); returns
        how many."""
        pending, n = self._pending, 0
        for id in ids:
            entry = pending.get(id)
            if entry is not None and entry[0] is group:
                del pending[id]
                n += 1
        return n

    async def call(self, id: str, request: Any) -> Resp:
        """Send one request and wait for the reply with the same id."""
        return (await self.call_many((id,), (request,)))[0]

    async def call_many(self, ids: Sequence[str], requests: Sequence[Any]) -> list[Resp]:
        """Send ``requests`` (as many at once as the in-flight bound allows) and wait for the
        reply to each, returned in request order."""
        group = _Group(len(ids), asyncio.get_running_loop())
        sent, size = 0, self._slots.size
        try:
            while sent < len(ids):
                chunk = min(size, len(ids) - sent)
                await self._slots.take(chunk)
                try:
                    self._register(group, ids[sent:sent + chunk], sent)
                except BaseException:
                    self._slots.give(chunk)
                    raise
                first, sent = sent, sent + chunk  # counted before the write: cancelled in it,
                await self._send(requests[first:sent])  # the ids are still forgotten below
            return await group.done
        finally:
            if group.left:  # failed or cancelled: give back the slots of what is unanswered
                self._slots.give(self._forget(group, ids[:sent]))

    async def call_batch(self, ids: Sequence[str], requests: Sequence[Any], eot: Any) -> list[Resp]:
        """Batch mode: send every request, then ``eot``; wait for the reply to each id and then
        for the server's EOT (an EOT before every id is answered is fatal, as in numa)."""
        group = _Group(len(ids), asyncio.get_running_loop(), eot=True)
        self._register(group, ids, 0)
        self._batch = group
        try:
            await self._send([*requests, eot])
            return await group.done
        finally:
            self._batch = None
            if group.left:
                self._forget(group, ids)

    async def _read_loop(self) -> None:
        failure: ClientError = UdfStreamError(self._what, None, "closed by the engine")
        try:
            while True:
                responses = await self._call.read_many()
                if not responses:
                    failure = UdfStreamError(
                        self._what, None, f"the server ended the stream with "
                        f"{len(self._pending)} request(s) pending")
                    break
                broken = self._answer(responses)
                if broken is not None:
                    failure = broken
                    break
        except grpc.aio.AioRpcError as exc:
            failure = stream_error(self._what, exc)
        except WireError as exc:
            failure = UdfProtocolError(f"{self._what}: the server sent a reply that is {exc}")
        finally:
            self._fail(failure)

    def _answer(self, responses: list[Any]) -> ClientError | None:
        """Hand each reply to its group; a batch's EOT completes the batch. Returns the error
        that breaks the stream, if one does."""
        pending = self._pending
        answered = 0
        try:
            for response in responses:
                entry = pending.pop(response.id, None)
                if entry is None:
                    batch = self._batch
                    if batch is not None and response.eot:  # batch mode: a MapReply
                        if batch.left:
                            return UdfProtocolError(
                                f"UDF_PARTIAL_RESPONSE(batch_map): {self._what} sent EOT with "
                                f"{batch.left} id(s) of the batch unanswered")
                        if not batch.done.done():
                            batch.done.set_result(batch.replies)
                        self._batch = None
                        continue
                    # numa logs and ignores a reply for an unknown id.
                    _log.warning("%s: ignoring a reply for unknown id %r", self._what,
                                 response.id)
                    continue
                group, i = entry
                group.replies[i] = response
                group.left -= 1
                if not group.eot:
                    answered += 1
                    if not group.left and not group.done.done():
                        group.done.set_result(group.replies)
            return None
        finally:
            if answered:
                self._slots.give(answered)

    def _fail(self, failure: ClientError) -> None:
        if self._failure is None:
            self._failure = failure
        pending, self._pending = self._pending, {}
        groups = {group for group, _ in pending.values()}
        self._slots.give(sum(1 for group, _ in pending.values() if not group.eot))
        if self._batch is not None:
            groups.add(self._batch)
        for group in groups:
            if not group.done.done():
                group.done.set_exception(self._failure)

    async def close(self) -> None:
        """Cancel the stream and fail whatever is still pending."""
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
        # the data requests are written as bytes (local.wire), the handshake and EOT are not
        self._map_fn = channel.stream_stream(
            "/map.v1.Map/MapFn", request_serializer=encoded,
            response_deserializer=map_response)
        self._stream: _Correlator[Any] = _Correlator(f"{name} MapFn stream", max_in_flight)

    @classmethod
    async def open(cls, channel: Channel, *, max_in_flight: int = 500,
                   name: str = "map") -> MapClient:
        """Open the MapFn stream and complete the handshake."""
        client = cls(channel, max_in_flight=max_in_flight, name=name)
        handshake = map_pb2.MapRequest(handshake=map_pb2.Handshake(sot=True))
        await client._stream.start(client._map_fn, handshake, lambda reply: bool(reply.handshake))
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
        return (await self._stream.call(id, request)).results  # type: ignore[no-any-return]

    async def map_many(self, items: Sequence[Outgoing]) -> list[list[Result]]:
        """Unary mode, many at once: map ``items`` (sent together, as far as ``max_in_flight``
        allows); returns each item's results, in item order, once all are answered."""
        responses = await self._stream.call_many([m.id for m in items], _map_requests(items))
        return [response.results for response in responses]

    async def map_batch(self, items: Sequence[Outgoing]) -> list[list[Result]]:
        """Batch mode: map ``items`` as one batch; returns each item's results, in item
        order."""
        responses = await self._stream.call_batch([m.id for m in items], _map_requests(items),
                                                  _MAP_EOT)
        return [response.results for response in responses]

    async def close(self) -> None:
        """End the stream (the channel stays open; the caller closes it)."""
        await self._stream.close()


_MAP_EOT = map_pb2.MapRequest(status=map_pb2.TransmissionStatus(eot=True))


def _map_requests(items: Sequence[Outgoing]) -> list[bytes]:
    return [map_request(m.id, m.keys, m.value, m.event_time_ns, m.watermark_ns, m.headers,
                        metadata_bytes(m.user_metadata)) for m in items]


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
        # the data requests are written as bytes (local.wire), the handshake is not
        self._transform_fn = channel.stream_stream(
            "/sourcetransformer.v1.SourceTransform/SourceTransformFn",
            request_serializer=encoded,
            response_deserializer=sourcetransform_pb2.SourceTransformResponse.FromString)
        self._what = f"{name} SourceTransformFn stream"
        self._stream: _Correlator[Any] = _Correlator(self._what, max_in_flight)

    @classmethod
    async def open(cls, channel: Channel, *, max_in_flight: int = 500,
                   name: str = "transformer") -> TransformClient:
        """Open the SourceTransformFn stream and complete the handshake."""
        client = cls(channel, max_in_flight=max_in_flight, name=name)
        handshake = sourcetransform_pb2.SourceTransformRequest(
            handshake=sourcetransform_pb2.Handshake(sot=True))
        await client._stream.start(
            client._transform_fn, handshake,
            lambda reply: reply.HasField("handshake") and reply.handshake.sot)
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
        request = transform_request(id, keys, value, event_time_ns, watermark_ns, headers,
                                    metadata_bytes(user_metadata))
        return self._results(id, await self._stream.call(id, request))

    async def transform_many(
        self, items: Sequence[tuple[str, Sequence[str], bytes, int, Mapping[str, str] | None]],
    ) -> list[list[TransformResult]]:
        """Transform ``(id, keys, value, event_time_ns, headers)`` source messages, sent
        together (as far as ``max_in_flight`` allows); returns each one's results, in order."""
        requests = [transform_request(id, keys, value, t, None, headers)
                    for id, keys, value, t, headers in items]
        ids = [item[0] for item in items]
        responses = await self._stream.call_many(ids, requests)
        return [self._results(id, r) for id, r in zip(ids, responses, strict=True)]

    def _results(self, id: str, response: Any) -> list[TransformResult]:
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
