"""The lean gRPC transport: a gRPC server on h2 and asyncio, over one Unix socket.

h2 does HTTP/2 (framing, HPACK, flow-control accounting, PING answers);
:mod:`nfbuilder.runtime.grpcwire` the gRPC layer (message prefix, headers, status trailers,
grpc-timeout); :mod:`nfbuilder.runtime.stream` the stream choreography, shared with the grpcio
transport. The servicers are the very objects grpc.aio serves: :func:`methods_of` reads their
methods from the generated ``add_*Servicer_to_server`` function.

Each connection is one asyncio protocol. A read is fed to h2 whole, every complete message in
it is handled, and all that the read produced goes out in one ``transport.write``. Calls of a
one-to-one stream (map, transformer: :meth:`BidiStream.inline`) are answered right there, in
``data_received``, with no task or future per message; the requests of a batch stream (sink:
:meth:`BidiStream.batched`) are collected there too, and one task answers the batches their
EOTs close, in turn, while there are any; every other call (source, the unary methods) runs as
one task.

Example::

    methods = methods_of(map_pb2_grpc.add_MapServicer_to_server, servicer)
    server = H2Server(methods, max_message_bytes=64 << 20)
    await server.start("/var/run/numaflow/map.sock")
    ...
    await server.stop(grace_s=5.0)   # GOAWAY, in-flight calls finish, the rest get UNAVAILABLE
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, NoReturn, cast

import attrs
import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from nfbuilder.runtime.grpcwire import (
    GrpcWireError,
    MessageReader,
    frame_message,
    parse_timeout,
    response_headers,
    status_trailers,
)
from nfbuilder.runtime.stream import DETAILS_TRAILER, BatchCall, BidiStream, Failure, InlineCall

log = logging.getLogger("nfbuilder.runtime")

#: our receive windows; numa (hyper) opens 2 MiB per stream, 5 MiB per connection for its own
STREAM_WINDOW = 4 * 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024
MAX_CONCURRENT_STREAMS = 100
#: parsed requests a task call may hold unread before we stop reopening the client's window
QUEUE_HIGH_WATER = 4 * 1024 * 1024
_DEFAULT_WINDOW = 65_535  # RFC 9113's initial connection window

_STATUS = {code.value[0]: code for code in grpc.StatusCode}
_SHUTTING_DOWN = Failure(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
_DEADLINE = Failure(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")


@attrs.frozen
class Method:
    """One gRPC method as the h2 server runs it.

    ``unary(request, context)`` (an awaitable) or ``stream(requests, context)`` (an async
    generator) is the grpc.aio-style behaviour; ``inline`` is the :class:`BidiStream` whose
    calls are answered from ``data_received`` (one-to-one, one-to-many or batches).

    Example::

        Method("/map.v1.Map/IsReady", Empty.FromString, ReadyResponse.SerializeToString,
               unary=servicer.IsReady)
    """

    path: str
    parse: Callable[[bytes], Any]
    serialize: Callable[[Any], bytes]
    unary: Callable[[Any, Any], Awaitable[Any]] | None = None
    stream: Callable[[Any, Any], AsyncIterator[Any]] | None = None
    inline: BidiStream[Any, Any] | None = None


class _Recorder:
    """Stands in for a grpc server to collect what ``add_*Servicer_to_server`` registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        """Ignored: the same handlers come through :meth:`add_registered_method_handlers`."""

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None:
        for name, handler in handlers.items():
            self.handlers[f"/{service}/{name}"] = handler


def methods_of(add_to_server: Callable[[Any, Any], None], servicer: object) -> dict[str, Method]:
    """The methods of ``servicer`` by path, as its generated registration function lists them.

    Example::

        methods_of(map_pb2_grpc.add_MapServicer_to_server, MapServicer(handler, errors))
        # {'/map.v1.Map/MapFn': Method(...), '/map.v1.Map/IsReady': Method(...)}
    """
    recorder = _Recorder()
    add_to_server(servicer, recorder)
    return {path: _method(path, handler) for path, handler in recorder.handlers.items()}


def _method(path: str, handler: Any) -> Method:
    parse, serialize = handler.request_deserializer, handler.response_serializer
    if not handler.request_streaming and not handler.response_streaming:
        return Method(path, parse, serialize, unary=handler.unary_unary)
    if handler.request_streaming and handler.response_streaming:
        behaviour = handler.stream_stream
        owner = getattr(behaviour, "__self__", None)  # the BidiStream whose handle() this is
        inline = owner if isinstance(owner, BidiStream) and owner.answers_inline else None
        return Method(path, parse, serialize, stream=behaviour, inline=inline)
    raise ValueError(f"{path}: the h2 transport serves unary and bidi-streaming methods only")


class H2Server:
    """Serves ``methods`` on a Unix socket with the h2 transport; a request message over
    ``max_message_bytes`` ends its call with RESOURCE_EXHAUSTED.

    Example::

        server = H2Server(methods, max_message_bytes=64 << 20)
        await server.start(path)
        await server.stop(grace_s=5.0)
    """

    def __init__(self, methods: Mapping[str, Method], *, max_message_bytes: int) -> None:
        self.methods = {path.encode(): method for path, method in methods.items()}
        self.max_message_bytes = max_message_bytes
        self.stopping = False
        self.connections: set[_Connection] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self, path: str) -> None:
        """Listen on ``path`` (raises OSError when it cannot bind)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _Connection(self), path)

    async def stop(self, grace_s: float) -> None:
        """Stop accepting, send GOAWAY, let in-flight calls finish for up to ``grace_s``
        seconds, end the others with UNAVAILABLE, then close every connection."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.go_away()
        pending = [c.closed for c in self.connections if not c.closed.done()]
        if pending:
            await asyncio.wait(pending, timeout=grace_s)
        for connection in list(self.connections):
            connection.close_now(_SHUTTING_DOWN)
        remaining = [c.closed for c in self.connections if not c.closed.done()]
        if remaining:
            await asyncio.wait(remaining, timeout=1.0)


class _Aborted(Exception):
    """Raised by :meth:`_Context.abort` to unwind a handler; carries how the call ends."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class _Context:
    """The part of ``grpc.aio.ServicerContext`` our servicers use, for h2 task calls."""

    async def abort(
        self, code: grpc.StatusCode, details: str = "",
        trailing_metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> NoReturn:
        extra = dict(trailing_metadata)
        status = extra.pop(DETAILS_TRAILER, None)
        if extra:
            log.warning("h2 transport: trailing metadata %s not sent", sorted(extra))
        raw = status.encode() if isinstance(status, str) else status
        raise _Aborted(Failure(code, details, raw))


class _Call:
    """One HTTP/2 stream carrying one gRPC call."""

    __slots__ = ("batches", "client_done", "done", "failed", "headers_sent", "held", "inline",
                 "method", "out", "owed", "reader", "requests", "stream_id", "task", "timer",
                 "trailers", "unary_body")

    def __init__(self, stream_id: int, method: Method | None, max_message_bytes: int) -> None:
        self.stream_id = stream_id
        self.method = method
        self.reader = MessageReader(max_message_bytes)
        self.inline: InlineCall[Any, Any] | None = None
        self.batches: BatchCall[Any, Any] | None = None
        # a batch call: bytes received while a batch is answered, and those of them not yet
        # handed back to the client's window (over QUEUE_HIGH_WATER: once the answer is out)
        self.held = 0
        self.owed = 0
        #: a batch or task call: what ends it once what came before is answered (the batches
        #: closed before it; the requests queued before it, when the handler asks for more)
        self.failed: Failure | None = None
        self.requests: _Requests | None = None
        self.unary_body: list[bytes] = []
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.out = bytearray()  # framed responses waiting for the peer's flow-control window
        self.trailers: list[tuple[bytes, bytes]] | None = None  # sent once ``out`` is empty
        self.headers_sent = False
        self.done = False  # our side has ended (trailers queued or sent)
        self.client_done = False  # the client half-closed

    def stop_work(self) -> None:
        """Cancel the deadline and the call's task (unless that task is the caller)."""
        if self.timer is not None:
            self.timer.cancel()
        task = self.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()


class _Requests:
    """The requests of one task call, as the async iterator a grpc.aio handler reads.

    Bytes are acknowledged to h2 (the client's window reopens) as they arrive, unless more
    than :data:`QUEUE_HIGH_WATER` bytes wait unread: then only as the handler reads them.
    """

    def __init__(self, connection: _Connection, call: _Call) -> None:
        self._connection = connection
        self._call = call
        self._items: collections.deque[tuple[Any, int]] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._queued = 0
        self._owed = 0

    def put(self, requests: list[Any], sizes: list[int], received: int) -> None:
        """Queue parsed ``requests`` (of ``sizes`` wire bytes) that came in ``received`` bytes
        of DATA."""
        self._items.extend(zip(requests, sizes, strict=True))
        self._queued += sum(sizes)
        if self._queued > QUEUE_HIGH_WATER:
            self._owed += received
        else:
            self._connection.acknowledge(self._call.stream_id, received)
        self._wake()

    def close(self) -> None:
        self._closed = True
        self._wake()

    def fail(self, failure: Failure) -> None:
        """End the call with ``failure`` when the handler asks for a request past those
        queued (to it, the requests end there)."""
        self._call.failed = failure
        self._wake()

    def owed(self) -> int:
        """The received bytes held back from the client, now handed over (to give back)."""
        owed, self._owed = self._owed, 0
        return owed

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __aiter__(self) -> _Requests:
        return self

    async def __anext__(self) -> Any:
        while not self._items:
            failed = self._call.failed
            if failed is not None:
                self._connection.end(self._call, failed)
                raise StopAsyncIteration
            if self._closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        request, size = self._items.popleft()
        self._queued -= size
        if self._owed and self._queued <= QUEUE_HIGH_WATER:
            self._connection.acknowledge(self._call.stream_id, self._owed)
            self._owed = 0
            self._connection.flush_soon()
        return request


class _ServerH2Connection(h2.connection.H2Connection):
    """h2's connection, except that a client's GOAWAY does not end it.

    h2 treats a received GOAWAY as the end: nothing may be sent or received after it. A
    client's GOAWAY only says it opens no new streams (Node sends one as soon as it closes its
    session); the calls already open must still be answered (RFC 9113 §6.8).
    """

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Any], list[Any]]:
        event = h2.events.ConnectionTerminated()
        try:
            event.error_code = ErrorCodes(frame.error_code)
        except ValueError:  # an extension's code
            event.error_code = frame.error_code
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


class _Connection(asyncio.Protocol):
    """One client connection: an h2 state machine and its calls."""

    def __init__(self, server: H2Server) -> None:
        self._server = server
        self._h2 = _ServerH2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self._h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 64 * 1024,
        })
        self._calls: dict[int, _Call] = {}
        self._transport: asyncio.Transport | None = None
        self._flush_scheduled = False
        self._going_away = False
        self._closing = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._dispatch: dict[type, Callable[[Any], None]] = {
            h2.events.RequestReceived: self._on_request,
            h2.events.DataReceived: self._on_data,
            h2.events.StreamEnded: self._on_client_done,
            h2.events.StreamReset: self._on_reset,
            h2.events.WindowUpdated: self._on_window,
            h2.events.RemoteSettingsChanged: self._on_window,
            h2.events.ConnectionTerminated: self._on_peer_goaway,
        }

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass it
        self._server.connections.add(self)
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(CONNECTION_WINDOW - _DEFAULT_WINDOW)
        if self._server.stopping:  # accepted while the listener was closing
            self.go_away()
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.warning("closing an HTTP/2 connection that broke the protocol: %s", exc)
            self.close_now(None)  # h2 has queued its GOAWAY
            return
        dispatch = self._dispatch
        for event in events:
            if self._closing:
                return
            handler = dispatch.get(type(event))
            if handler is not None:
                handler(event)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        for call in self._calls.values():
            call.stop_work()
        self._calls.clear()
        self._server.connections.discard(self)
        if not self.closed.done():
            self.closed.set_result(None)

    # ------------------------------------------------------------ writing

    def flush(self) -> None:
        """Write everything h2 has queued, in one write."""
        self._flush_scheduled = False
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def flush_soon(self) -> None:
        """Flush once this loop iteration is over (task calls: one write for many sends)."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def acknowledge(self, stream_id: int, size: int) -> None:
        """Hand ``size`` received bytes of a stream back to the client's windows."""
        if size and not self._closing:
            self._h2.acknowledge_received_data(size, stream_id)

    def _send(self, call: _Call, data: bytes) -> None:
        if not call.done:
            call.out += data
            self._pump(call)

    def _pump(self, call: _Call) -> None:
        """Send what the peer's windows allow of ``call``'s responses, then its trailers."""
        if self._closing:
            return
        h2c, out, stream_id = self._h2, call.out, call.stream_id
        try:
            if out and not call.headers_sent:
                h2c.send_headers(stream_id, response_headers())
                call.headers_sent = True
            while out:
                size = min(h2c.local_flow_control_window(stream_id), h2c.max_outbound_frame_size,
                           len(out))
                if size <= 0:
                    return  # resumed by WindowUpdated / RemoteSettingsChanged
                h2c.send_data(stream_id, bytes(out[:size]))
                del out[:size]
            if call.trailers is not None:
                h2c.send_headers(stream_id, call.trailers, end_stream=True)
                call.trailers = None
                if not call.client_done:  # RFC 9113 §8.1: stop the client sending more
                    h2c.reset_stream(stream_id, ErrorCodes.NO_ERROR)
                self._forget(call)
        except h2.exceptions.StreamClosedError:
            self._forget(call)  # the client reset it (later in the same read)

    def end(self, call: _Call, failure: Failure) -> None:
        """:meth:`_finish` ``call`` with ``failure`` and send it soon (for its requests)."""
        self._finish(call, failure)
        self.flush_soon()

    def _finish(self, call: _Call, failure: Failure | None) -> None:
        """End ``call`` with OK (``failure`` None) or ``failure``; idempotent."""
        if call.done:
            return
        call.done = True
        if call.timer is not None:
            call.timer.cancel()
        if failure is None:
            call.trailers = status_trailers(0, headers_sent=call.headers_sent)
        else:
            call.trailers = status_trailers(failure.code.value[0], failure.message,
                                            failure.details, headers_sent=call.headers_sent)
        self._pump(call)

    def _forget(self, call: _Call) -> None:
        call.done = True
        call.stop_work()
        # bytes held back from a call that ends early (reset, deadline, an error) still count
        # against the connection's window: give them back, or the connection runs dry
        owed = call.owed + (call.requests.owed() if call.requests is not None else 0)
        call.held = call.owed = 0
        if owed:
            self.acknowledge(call.stream_id, owed)
            self.flush_soon()
        self._calls.pop(call.stream_id, None)
        if self._going_away and not self._calls:
            # not now: the rest of this read's events must still see an open connection
            asyncio.get_running_loop().call_soon(self._close_if_idle)

    def _close_if_idle(self) -> None:
        if not self._calls:
            self.close_now(None)

    # ------------------------------------------------------------ shutting down

    def go_away(self) -> None:
        """Tell the client to open no new streams; the open ones go on (graceful shutdown).

        h2 can send only a final GOAWAY (after it, it refuses to send anything), so this first
        one is serialized by hyperframe directly; h2 sends the final one in :meth:`close_now`.
        """
        if self._going_away or self._transport is None:
            return
        self._going_away = True
        frame = GoAwayFrame(0, last_stream_id=self._h2.highest_inbound_stream_id, error_code=0)
        self.flush()
        if not self._transport.is_closing():
            self._transport.write(frame.serialize())
        if not self._calls:
            self.close_now(None)

    def close_now(self, failure: Failure | None) -> None:
        """End every call with ``failure`` (None: nothing more to send), GOAWAY, close."""
        if self._closing or self._transport is None:
            return
        if failure is not None:
            for call in list(self._calls.values()):
                call.stop_work()
                self._finish(call, failure)
        self._closing = True
        if self._h2.state_machine.state != h2.connection.ConnectionState.CLOSED:
            self._h2.close_connection()  # the final GOAWAY
        self.flush()
        self._transport.close()

    # ------------------------------------------------------------ h2 events

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        if self._going_away:  # opened before the client saw our GOAWAY: it may retry
            self._h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        headers = dict(event.headers)  # type: ignore[arg-type]
        method = self._server.methods.get(headers.get(b":path", b""))
        call = _Call(stream_id, method, self._server.max_message_bytes)
        self._calls[stream_id] = call
        failure = _refusal(headers, method)
        if failure is not None or method is None:
            self._finish(call, failure)
            return
        timeout = headers.get(b"grpc-timeout")
        if timeout is not None:
            try:
                seconds = parse_timeout(timeout)
            except GrpcWireError as exc:
                self._finish(call, Failure(_STATUS[exc.code], str(exc)))
                return
            call.timer = asyncio.get_running_loop().call_later(seconds, self._expire, call)
        if method.inline is not None:
            call.batches = method.inline.batched()
            if call.batches is None:
                call.inline = method.inline.inline()
        elif method.stream is not None:
            call.requests = _Requests(self, call)
            call.task = asyncio.get_running_loop().create_task(self._run_stream(call, method))

    def _on_data(self, event: h2.events.DataReceived) -> None:
        size = event.flow_controlled_length
        call = self._calls.get(event.stream_id)
        if call is None or call.done or call.failed is not None:
            # answered already, refused, or ending once what came before is answered: drop it
            self.acknowledge(event.stream_id, size)
            return
        bad: Failure | None = None  # broken framing: the call ends after the messages before
        try:
            messages = call.reader.feed(event.data)
        except GrpcWireError as exc:
            messages, bad = exc.messages, Failure(_STATUS[exc.code], str(exc))
        if call.requests is not None:
            self._queue(call, call.requests, messages, size, bad)
            return
        if call.batches is not None:
            self._collect(call, call.batches, messages, size, bad)
            return
        self.acknowledge(call.stream_id, size)
        if call.inline is not None:
            if messages or bad is not None:
                self._feed(call, call.inline, messages, bad)
        elif bad is not None:
            self._finish(call, bad)
        else:
            call.unary_body.extend(messages)

    def _feed(self, call: _Call, feeder: InlineCall[Any, Any] | BatchCall[Any, Any],
              messages: list[bytes], bad: Failure | None = None) -> None:
        """Parse ``messages`` and feed them to ``feeder``, up to the first that does not parse;
        send the responses it gives at once; end the call with the failure, if one ends it
        (``bad``: the one after ``messages``). A batch call first answers the batches closed
        before the failure (as grpcio's would, reading one request at a time): its task ends
        the call."""
        method = call.method
        assert method is not None
        requests, unparsed = self._parse(method, messages)
        responses: list[Any] = []
        failure = feeder.feed(requests, responses) or unparsed or bad
        if responses:
            serialize = method.serialize
            self._send(call, b"".join([frame_message(serialize(r)) for r in responses]))
        if failure is None:
            return
        if isinstance(feeder, BatchCall) and (feeder.ready or call.task is not None):
            call.failed = failure
        else:
            self._finish(call, failure)

    def _collect(self, call: _Call, batches: BatchCall[Any, Any], messages: list[bytes],
                 size: int, bad: Failure | None = None) -> None:
        """Feed a batch call; the first batch its EOT closes starts the task answering them."""
        if call.task is None:
            self.acknowledge(call.stream_id, size)
        else:  # as a task call's queue: the client may not run far ahead of a slow handler
            call.held += size
            if call.held > QUEUE_HIGH_WATER:
                call.owed += size
            else:
                self.acknowledge(call.stream_id, size)
        # the only response fed back is the handshake reply; the batches' go from the task
        if messages or bad is not None:
            self._feed(call, batches, messages, bad)
        if batches.ready and call.task is None and not call.done:
            assert call.method is not None
            call.task = asyncio.get_running_loop().create_task(
                self._answer_batches(call, call.method, batches))

    def _queue(self, call: _Call, requests: _Requests, messages: list[bytes], size: int,
               bad: Failure | None = None) -> None:
        assert call.method is not None
        parsed, unparsed = self._parse(call.method, messages)
        if parsed:
            requests.put(parsed, [len(m) + 5 for m in messages[:len(parsed)]], size)
        else:
            self.acknowledge(call.stream_id, size)
        failure = unparsed or bad
        if failure is not None:  # the handler gets the requests before it first, as on grpcio
            requests.fail(failure)

    @staticmethod
    def _parse(method: Method, messages: list[bytes]) -> tuple[list[Any], Failure | None]:
        """The requests in ``messages`` up to the first that does not parse, and the failure
        that one ends its call with (None: all parse)."""
        parse = method.parse
        parsed: list[Any] = []
        add = parsed.append
        try:
            for message in messages:
                add(parse(message))
        except Exception as exc:  # noqa: BLE001 - a bad message ends its call, not the server
            return parsed, Failure(grpc.StatusCode.INTERNAL,
                                   f"could not parse a request of {method.path}: {exc!r}")
        return parsed, None

    def _on_client_done(self, event: h2.events.StreamEnded) -> None:
        call = self._calls.get(event.stream_id)
        if call is None:
            return
        call.client_done = True
        if call.done:
            return
        if call.failed is not None:  # its task or handler ends it, once what came before is done
            if call.requests is not None:
                call.requests.close()
            return
        if call.reader.pending:
            self._finish(call, Failure(grpc.StatusCode.INTERNAL, "the client ended the stream "
                                       f"in the middle of a message ({call.reader.pending} "
                                       "bytes of it)"))
        elif call.requests is not None:
            call.requests.close()
        elif call.batches is not None:
            if call.task is None:  # else the task ends the call once it has answered
                call.batches.end()
                self._finish(call, None)
        elif call.inline is not None:
            self._finish(call, None)  # the client half-closed: as grpc.aio, end with OK
        else:
            self._start_unary(call)

    def _start_unary(self, call: _Call) -> None:
        method = call.method
        assert method is not None and method.unary is not None
        if len(call.unary_body) != 1:
            self._finish(call, Failure(grpc.StatusCode.INTERNAL, f"{method.path} is unary: "
                                       "expected exactly one request message, got "
                                       f"{len(call.unary_body)}"))
            return
        parsed, bad = self._parse(method, call.unary_body)
        if bad is not None:
            self._finish(call, bad)
            return
        call.task = asyncio.get_running_loop().create_task(
            self._run_unary(call, method, parsed[0]))

    def _on_reset(self, event: h2.events.StreamReset) -> None:
        call = self._calls.get(event.stream_id)
        if call is not None:  # the client cancelled: nothing more to send
            self._forget(call)

    def _on_window(self, event: h2.events.WindowUpdated | h2.events.RemoteSettingsChanged
                   ) -> None:
        stream_id = getattr(event, "stream_id", 0)
        if stream_id:
            call = self._calls.get(stream_id)
            if call is not None:
                self._pump(call)
            return
        for call in list(self._calls.values()):
            if call.out or call.trailers is not None:
                self._pump(call)

    def _on_peer_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        # The client opens no new streams: close once the open calls are answered.
        log.debug("the client sent GOAWAY (error code %s)", event.error_code)
        self._going_away = True
        if not self._calls:
            asyncio.get_running_loop().call_soon(self._close_if_idle)

    def _expire(self, call: _Call) -> None:
        call.stop_work()
        self._finish(call, _DEADLINE)
        self.flush()

    # ------------------------------------------------------------ task calls

    async def _run_stream(self, call: _Call, method: Method) -> None:
        assert method.stream is not None
        serialize = method.serialize
        failure: Failure | None = None
        try:
            async for response in method.stream(call.requests, _Context()):
                self._send(call, frame_message(serialize(response)))
                self.flush_soon()
        except _Aborted as aborted:
            failure = aborted.failure
        except Exception as exc:  # noqa: BLE001 - the servicer's own bug ends only this call
            failure = _unexpected(method, exc)
        self._finish(call, failure)
        self.flush_soon()

    async def _answer_batches(self, call: _Call, method: Method,
                              batches: BatchCall[Any, Any]) -> None:
        """Answer a batch call's ready batches in order; then, if the client has half-closed,
        end the call with OK."""
        serialize = method.serialize
        failure: Failure | None = None
        try:
            while failure is None and batches.ready:
                responses, failure = await batches.answer()
                if responses:
                    self._send(call, b"".join([frame_message(serialize(r)) for r in responses]))
                self.flush_soon()
        except Exception as exc:  # noqa: BLE001 - the servicer's own bug ends only this call
            failure = _unexpected(method, exc)
        call.task = None
        if failure is None:
            failure = call.failed
        if call.owed:
            self.acknowledge(call.stream_id, call.owed)
        call.held = call.owed = 0
        if failure is not None or call.client_done:
            if failure is None:
                batches.end()
            self._finish(call, failure)
        self.flush_soon()

    async def _run_unary(self, call: _Call, method: Method, request: Any) -> None:
        assert method.unary is not None
        try:
            response = await method.unary(request, _Context())
        except _Aborted as aborted:
            self._finish(call, aborted.failure)
        except Exception as exc:  # noqa: BLE001 - the servicer's own bug ends only this call
            self._finish(call, _unexpected(method, exc))
        else:
            self._send(call, frame_message(method.serialize(response)))
            self._finish(call, None)
        self.flush_soon()


def _refusal(headers: Mapping[bytes, bytes], method: Method | None) -> Failure | None:
    """Why a call cannot be served at all (None: it can)."""
    if method is None:
        path = headers.get(b":path", b"").decode("latin-1")
        return Failure(grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {path}")
    if headers.get(b":method") != b"POST":
        return Failure(grpc.StatusCode.UNIMPLEMENTED, "gRPC calls must use POST, got "
                       f"{headers.get(b':method', b'').decode('latin-1')}")
    content_type = headers.get(b"content-type", b"")
    if not content_type.startswith(b"application/grpc"):
        return Failure(grpc.StatusCode.INVALID_ARGUMENT, "content-type must be application/grpc,"
                       f" got {content_type.decode('latin-1')!r}")
    return None


def _unexpected(method: Method, exc: Exception) -> Failure:
    log.error("%s failed unexpectedly", method.path, exc_info=exc)
    return Failure(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}")
