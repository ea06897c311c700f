"""The lean client transport: gRPC over HTTP/2 with the ``h2`` library on asyncio, on a Unix socket.

:class:`H2Channel` offers the part of ``grpc.aio.Channel`` that the generated stubs and the
numa-like clients use — ``unary_unary``, ``stream_stream`` and ``close`` — and its calls behave
like grpc.aio's (``read`` returns ``grpc.aio.EOF`` at the end, failures raise
``grpc.aio.AioRpcError`` carrying the status, the message and the trailing metadata), so
``MapStub(channel)``, :class:`~nfbuilder.local.clients.MapClient` and the others run on either
channel unchanged. ``h2`` does the HTTP/2 framing, HPACK and flow control;
:mod:`nfbuilder.runtime.grpcwire` the gRPC message framing, headers and status trailers.

    channel = await H2Channel.connect("/tmp/w/s/0/map.sock")
    await map_pb2_grpc.MapStub(channel).IsReady(empty_pb2.Empty(), timeout=1)
    await channel.close()

One connection carries every call of a replica. The settings are those numa's client ends up
with (tonic 0.14 on hyper 1.6 in numa v1.8.3 sets none of its own, so hyper's client defaults
apply): a 2 MiB stream window, a 5 MiB connection window, 16 KiB frames, a 16 KiB header list,
no server push, no keepalive pings (the server's are answered), 64 MiB messages. Writes are
coalesced: the messages the callers write during one event-loop iteration go out in as few DATA
frames as the frame size allows, in one ``transport.write``. Reads parse every complete message
a socket read brings and wake each stream's reader once. Received data is handed back to the
server (WINDOW_UPDATE) as it arrives, unless a stream's reader falls behind by
:data:`ACK_BELOW` bytes of unread messages; then only as it reads. ``h2`` cannot go on with a
connection once the server sent GOAWAY, so a GOAWAY fails every call in flight with
UNAVAILABLE at once (grpc.aio lets the streams the server still serves run until it ends them;
for the engine's long-lived streams both end in a failure and a restart).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, cast

import grpc
import grpc.aio
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

from nfbuilder.runtime.grpcwire import (
    GrpcWireError,
    MessageReader,
    frame_message,
    request_headers,
    status_of,
)

__all__ = ["ACK_BELOW", "CONNECTION_WINDOW", "H2Call", "H2Channel", "MAX_FRAME",
           "MAX_HEADER_LIST", "SEND_BUFFER", "STREAM_WINDOW"]

#: hyper's HTTP/2 client defaults, which numa's tonic channel keeps (see the module docstring)
STREAM_WINDOW = 2 * 1024 * 1024
CONNECTION_WINDOW = 5 * 1024 * 1024
MAX_FRAME = 16 * 1024
MAX_HEADER_LIST = 16 * 1024
#: bytes a call may have waiting to be sent before ``write`` waits (hyper's max_send_buffer_size)
SEND_BUFFER = 1024 * 1024
#: unread complete messages of a call, in bytes, from which received data is no longer handed
#: back to the server until the reader catches up (flow control reaches the server)
ACK_BELOW = STREAM_WINDOW // 2
_SPEC_WINDOW = 65_535  # every HTTP/2 window starts here until SETTINGS / WINDOW_UPDATE

_CODES = {code.value[0]: code for code in grpc.StatusCode}
# RST_STREAM error code -> gRPC status, as gRPC's HTTP/2 mapping says
_RESET_CODES: dict[int, grpc.StatusCode] = {
    ErrorCodes.REFUSED_STREAM: grpc.StatusCode.UNAVAILABLE,
    ErrorCodes.CANCEL: grpc.StatusCode.CANCELLED,
    ErrorCodes.ENHANCE_YOUR_CALM: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCodes.INADEQUATE_SECURITY: grpc.StatusCode.PERMISSION_DENIED,
}
# HTTP status of a response that is not gRPC -> gRPC status, as gRPC's HTTP mapping says
_HTTP_CODES = {
    b"400": grpc.StatusCode.INTERNAL, b"401": grpc.StatusCode.UNAUTHENTICATED,
    b"403": grpc.StatusCode.PERMISSION_DENIED, b"404": grpc.StatusCode.UNIMPLEMENTED,
    b"429": grpc.StatusCode.UNAVAILABLE, b"502": grpc.StatusCode.UNAVAILABLE,
    b"503": grpc.StatusCode.UNAVAILABLE, b"504": grpc.StatusCode.UNAVAILABLE,
}
_GOAWAY = 0x7  # the GOAWAY frame type


def _rpc_error(code: grpc.StatusCode, details: str,
               trailers: grpc.aio.Metadata | None = None) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers or grpc.aio.Metadata(),
                                details, f"h2 client: {code.name}: {details}")


def _error_name(code: int | None) -> str:
    try:
        return ErrorCodes(code or 0).name
    except ValueError:
        return f"error code {code}"


def _trailing_metadata(trailers: list[tuple[bytes, bytes]]) -> grpc.aio.Metadata:
    """The trailers as grpc.aio shows them: no pseudo-headers, status or message; ``-bin``
    values base64-decoded."""
    pairs: list[tuple[str, str | bytes]] = []
    for name, value in trailers:
        if name.startswith(b":") or name in (b"grpc-status", b"grpc-message", b"content-type"):
            continue
        key = name.decode("ascii", "replace")
        if key.endswith("-bin"):
            pairs.append((key, base64.b64decode(value + b"=" * (-len(value) % 4))))
        else:
            pairs.append((key, value.decode("ascii", "replace")))
    return grpc.aio.Metadata(*pairs)


class H2Call:
    """One gRPC call on an HTTP/2 stream, with grpc.aio's reader/writer call API.

    Made by the channel's multi-callables, never directly::

        call = channel.stream_stream("/map.v1.Map/MapFn", request_serializer=...,
                                     response_deserializer=...)()
        await call.write(request)
        response = await call.read()      # grpc.aio.EOF once the server ends the stream OK
        await call.done_writing()
    """

    __slots__ = (
        "_backlog", "_cancelled", "_conn", "_deserialize", "_done", "_drain", "_error",
        "_half_closed", "_inbox", "_local_closed", "_outbox", "_pump", "_reader", "_serialize",
        "_timer", "_trailers", "_unacked", "_waiter", "stream_id",
    )

    def __init__(self, conn: _Connection, serialize: Callable[[Any], bytes] | None,
                 deserialize: Callable[[bytes], Any] | None) -> None:
        self._conn = conn
        self._serialize = serialize
        self._deserialize = deserialize
        self.stream_id = 0
        # receiving: DATA bytes -> messages (the reader), kept in the inbox until read
        self._reader = MessageReader(conn.max_message_bytes)
        self._inbox: deque[bytes] = deque()
        self._backlog = 0  # bytes of the messages in the inbox
        self._unacked = 0  # flow-controlled bytes received, not yet handed back
        self._waiter: asyncio.Future[None] | None = None
        self._trailers: list[tuple[bytes, bytes]] = []
        # sending
        self._outbox = bytearray()  # framed messages not yet given to h2
        # set when the outbox shrinks or the call ends; each writer waiting has its own future
        # in it, so one that is cancelled leaves the others waiting
        self._drain = asyncio.Event()
        self._half_closed = False  # done_writing was called
        self._local_closed = False  # END_STREAM or RST_STREAM is out
        self._pump: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        # the end
        self._done = False
        self._cancelled = False
        self._error: grpc.aio.AioRpcError | None = None

    # ------------------------------------------------------------------ grpc.aio's call API

    def done(self) -> bool:
        """Whether the call has ended (status received, failed or cancelled)."""
        return self._done

    def cancel(self) -> bool:
        """Cancel the call (RST_STREAM CANCEL); False when it had already ended."""
        if self._done:
            return False
        self._cancelled = True
        self._conn.finish(self, _rpc_error(grpc.StatusCode.CANCELLED,
                                           "Locally cancelled by application!"),
                          reset=ErrorCodes.CANCEL)
        return True

    async def write(self, request: Any) -> None:
        """Queue one request; it leaves with whatever else is written in this loop iteration.
        Waits while :data:`SEND_BUFFER` bytes are waiting (flow control, a slow socket)."""
        await self.write_many((request,))

    async def write_many(self, requests: Sequence[Any]) -> None:
        """:meth:`write` for several requests at once: framed in one pass, sent together. Unlike
        grpc.aio's ``write``, calls may overlap (each one's requests stay together)."""
        if self._done:
            if self._error is not None:
                raise self._error
            raise asyncio.InvalidStateError("RPC already finished.")
        if self._half_closed:
            raise asyncio.InvalidStateError("RPC is half closed after calling done_writing.")
        serialize, limit = self._serialize, self._conn.max_message_bytes
        parts = []
        for request in requests:
            data = serialize(request) if serialize is not None else request
            if len(data) > limit:
                error = _rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"Sent message larger than max ({len(data)} vs. {limit})")
                self._conn.finish(self, error, reset=ErrorCodes.CANCEL)
                raise error
            parts.append(frame_message(data))
        self._outbox += b"".join(parts)
        self._conn.want_send(self)
        if len(self._outbox) >= SEND_BUFFER or self._conn.paused:
            await self._drained()

    async def done_writing(self) -> None:
        """Half-close: END_STREAM goes out after the requests written so far."""
        if self._done or self._half_closed:
            return
        self._half_closed = True
        self._conn.want_send(self)

    async def read(self) -> Any:
        """The next response, ``grpc.aio.EOF`` after the last one of a call that ended OK;
        raises ``AioRpcError`` with the status of a failed call (after its earlier responses)."""
        if not self._inbox and not await self._arrived():
            return grpc.aio.EOF
        raw = self._inbox.popleft()
        self._backlog -= len(raw)
        self._read_some()
        return self._deserialize(raw) if self._deserialize is not None else raw

    async def read_many(self) -> list[Any]:
        """Every response that has arrived, at least one (waits for it); ``[]`` after the last
        one of a call that ended OK; raises as :meth:`read` does."""
        if not self._inbox and not await self._arrived():
            return []
        raws, self._inbox = list(self._inbox), deque()
        self._backlog = 0
        self._read_some()
        deserialize = self._deserialize
        return [deserialize(raw) for raw in raws] if deserialize is not None else raws

    async def _arrived(self) -> bool:
        """Wait for a response in the inbox: True, or False when the call ended OK without
        one more; raises for a failed or cancelled call."""
        while not self._inbox:
            if self._done:
                if self._cancelled:
                    raise asyncio.CancelledError
                if self._error is not None:
                    raise self._error
                return False
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._cancelled:
            raise asyncio.CancelledError
        return True

    def _read_some(self) -> None:
        """Responses left the inbox: hand the received bytes back once the reader caught up."""
        if self._unacked and self._backlog < ACK_BELOW:
            self._conn.hand_back(self)

    # ------------------------------------------------------------------ the connection's side

    def _receive(self, data: bytes, flow_controlled: int) -> None:
        """DATA arrived: complete messages go to the inbox (the reader gathers a message spread
        over many frames and joins it once)."""
        self._unacked += flow_controlled
        try:
            messages = self._reader.feed(data)
        except GrpcWireError as exc:
            self._conn.finish(self, _rpc_error(_CODES[exc.code], str(exc)),
                              reset=ErrorCodes.CANCEL)
            return
        if messages:
            self._inbox.extend(messages)
            self._backlog += sum(len(m) for m in messages)
            self._wake()
        if self._backlog < ACK_BELOW:
            self._conn.hand_back_soon[self] = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_writer(self) -> None:
        self._drain.set()

    async def _drained(self) -> None:
        while not self._done and (len(self._outbox) >= SEND_BUFFER or self._conn.paused):
            self._drain.clear()  # only a wake-up from now on means there may be room
            await self._drain.wait()
        if self._error is not None:
            raise self._error

    async def _send_all(self, requests: AsyncIterator[Any]) -> None:
        """Write what a request iterator yields, then half-close (grpc.aio's iterator style)."""
        try:
            async for request in requests:
                await self.write(request)
            await self.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the call has ended; ``read`` reports how
        except Exception as exc:  # the iterator failed: so does the call
            self._conn.finish(self, _rpc_error(
                grpc.StatusCode.UNKNOWN, f"the request iterator raised {exc!r}"),
                reset=ErrorCodes.CANCEL)


class _FrameBounds:
    """Follows where HTTP/2 frames begin in the bytes from the server, to end a read right after
    a GOAWAY frame.

    ``h2`` closes its state machine on a GOAWAY and raises on any frame after it, and the
    exception loses the events of the whole read, responses and trailers that came before the
    GOAWAY included. Only the length and type of each 9-byte frame header are read here; h2
    parses the frames.

        bounds = _FrameBounds()
        end = bounds.cut(data)   # len(data), or the offset just after a GOAWAY frame
    """

    __slots__ = ("_goaway", "_header", "_left")

    def __init__(self) -> None:
        self._left = 0  # payload bytes of the current frame still to come
        self._goaway = False  # the current frame is a GOAWAY
        self._header = b""  # the start of a frame header that the last read cut

    def cut(self, data: bytes) -> int:
        size, pos = len(data), 0
        if self._header:
            take = 9 - len(self._header)
            if size < take:
                self._header += data
                return size
            header, self._header = self._header + data[:take], b""
            self._left, self._goaway = int.from_bytes(header[:3], "big"), header[3] == _GOAWAY
            pos = take
        while True:
            end = pos + self._left
            if end > size:
                self._left = end - size
                return size
            if self._goaway:
                return end
            if end + 9 > size:
                self._header, self._left = data[end:], 0
                return size
            self._left, self._goaway = int.from_bytes(data[end:end + 3], "big"), \
                data[end + 3] == _GOAWAY
            pos = end + 9


class _Connection(asyncio.Protocol):
    """The HTTP/2 connection: h2's state machine between the socket and the calls."""

    def __init__(self, authority: str, max_message_bytes: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.authority = authority
        self.max_message_bytes = max_message_bytes
        h2c = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None))
        # What hyper's client puts in its first SETTINGS (numa's; see the module docstring).
        h2c.local_settings = h2.settings.Settings(client=True, initial_values={
            SettingCodes.ENABLE_PUSH: 0,
            SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            SettingCodes.MAX_FRAME_SIZE: MAX_FRAME,
            SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
        })
        self.h2 = h2c
        self._bounds = _FrameBounds()
        self.transport: asyncio.Transport | None = None
        self.calls: dict[int, H2Call] = {}
        self._sending: dict[H2Call, None] = {}  # calls with bytes or an END_STREAM to send
        self._flush_soon = False
        #: calls whose received bytes go back to the server at the end of this socket read
        self.hand_back_soon: dict[H2Call, None] = {}
        self.paused = False  # the socket's buffer is full (pause_writing)
        self.closed_why: str | None = None  # set once no new call can start
        self.settings_received: asyncio.Future[None] = self.loop.create_future()
        self.lost: asyncio.Future[None] = self.loop.create_future()

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast, not a check.
        self.transport = cast(asyncio.Transport, transport)
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - _SPEC_WINDOW)
        self.transport.write(self.h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        if self.closed_why is not None:
            return  # closing (GOAWAY, protocol error): every call has been failed already
        end = self._bounds.cut(data)
        if end < len(data):
            data = data[:end]  # what follows the GOAWAY: h2 would refuse it
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.abort(f"the server broke the HTTP/2 protocol: {exc}")
            return
        calls = self.calls
        try:
            for event in events:
                if type(event) is h2.events.DataReceived:
                    chunk, length = event.data or b"", event.flow_controlled_length or 0
                    call = calls.get(event.stream_id or 0)
                    if call is not None:
                        call._receive(chunk, length)
                    elif length:
                        # a call already over: the connection window still wants them back
                        self.h2.acknowledge_received_data(length, event.stream_id or 0)
                elif type(event) is h2.events.ResponseReceived:
                    self._response(event)
                elif type(event) is h2.events.TrailersReceived:
                    call = calls.get(event.stream_id or 0)
                    if call is not None:
                        call._trailers = list(event.headers or ())
                elif type(event) is h2.events.StreamEnded:
                    self._ended(event.stream_id)
                elif type(event) is h2.events.StreamReset:
                    self._reset_by_server(event)
                elif type(event) is h2.events.ConnectionTerminated:
                    self._goaway(event)
                    return
                elif (type(event) is h2.events.RemoteSettingsChanged
                      and not self.settings_received.done()):
                    self.settings_received.set_result(None)
                # WindowUpdated: the flush below sends what waited for it; PingReceived: h2
                # has queued the PING ACK, the flush sends it too.
        finally:
            # once per socket read, not per DATA frame: fewer WINDOW_UPDATEs, less h2 work
            for call in self.hand_back_soon:
                if call._unacked and not call._done:
                    self.hand_back(call, flush=False)
            self.hand_back_soon.clear()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        why = f"the connection to the server was lost ({exc})" if exc else \
            "the server closed the connection"
        self._fail_all(why)
        self.transport = None
        if not self.lost.done():
            self.lost.set_result(None)
        if not self.settings_received.done():
            self.settings_received.set_exception(ConnectionResetError(why))

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        for call in list(self.calls.values()):
            call._wake_writer()
        self.schedule_flush()

    # ------------------------------------------------------------------ calls

    def open(self, call: H2Call, path: str, timeout: float | None) -> None:
        """Send the HEADERS that start ``call`` (or end it at once when that is impossible)."""
        if self.closed_why is not None:
            self.finish(call, _rpc_error(grpc.StatusCode.UNAVAILABLE, self.closed_why))
            return
        headers = request_headers(path, authority=self.authority, timeout_s=timeout)
        try:
            stream_id = self.h2.get_next_available_stream_id()
            self.h2.send_headers(stream_id, headers)
        except h2.exceptions.H2Error as exc:
            self.finish(call, _rpc_error(grpc.StatusCode.UNAVAILABLE,
                                         f"could not start a stream: {exc!r}"))
            return
        call.stream_id = stream_id
        self.calls[stream_id] = call
        if timeout is not None:
            call._timer = self.loop.call_later(timeout, self._expire, call)
        self.schedule_flush()

    def want_send(self, call: H2Call) -> None:
        self._sending[call] = None
        self.schedule_flush()

    def schedule_flush(self) -> None:
        """Flush once the callbacks of this loop iteration have run: a burst of writes goes
        out together."""
        if not self._flush_soon:
            self._flush_soon = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Give h2 what the flow-control windows allow, then write all it has in one go."""
        self._flush_soon = False
        if self.transport is None:
            return
        if not self.paused:
            for call in list(self._sending):
                self._send(call)
        data = self.h2.data_to_send()
        if data:
            self.transport.write(data)

    def _send(self, call: H2Call) -> None:
        h2c, out, stream_id = self.h2, call._outbox, call.stream_id
        size, sent = len(out), 0
        if size:
            view = memoryview(out)
            try:
                while sent < size:
                    room = min(h2c.local_flow_control_window(stream_id),
                               h2c.max_outbound_frame_size)
                    if room <= 0:
                        break  # a WINDOW_UPDATE will bring us back here
                    n = min(size - sent, room)
                    end = call._half_closed and sent + n == size
                    h2c.send_data(stream_id, view[sent:sent + n], end_stream=end)
                    call._local_closed = end
                    sent += n
            except h2.exceptions.H2Error as exc:
                view.release()
                self.finish(call, _rpc_error(grpc.StatusCode.INTERNAL,
                                             f"could not send on the stream: {exc!r}"))
                return
            view.release()
            del out[:sent]
            if len(out) < SEND_BUFFER:
                call._wake_writer()
        if not out:
            if call._half_closed and not call._local_closed:
                h2c.end_stream(stream_id)
                call._local_closed = True
            del self._sending[call]

    def hand_back(self, call: H2Call, *, flush: bool = True) -> None:
        """Return the received bytes of ``call`` to the flow-control windows."""
        with contextlib.suppress(h2.exceptions.H2Error):  # closing: nothing more will come
            self.h2.acknowledge_received_data(call._unacked, call.stream_id)
        call._unacked = 0
        if flush:
            self.schedule_flush()

    def finish(self, call: H2Call, error: grpc.aio.AioRpcError | None,
               reset: ErrorCodes | None = None) -> None:
        """End ``call`` with ``error`` (None: OK); ``reset`` sends RST_STREAM with that code."""
        if call._done:
            return
        call._done, call._error = True, error
        if call.stream_id:
            self.calls.pop(call.stream_id, None)
        self._sending.pop(call, None)
        call._outbox.clear()
        if call._unacked:  # the connection window wants them back even if nobody reads them
            self.hand_back(call)
        if call._timer is not None:
            call._timer.cancel()
        if reset is not None and call.stream_id and not call._local_closed:
            with contextlib.suppress(h2.exceptions.H2Error):  # already closed by the server
                self.h2.reset_stream(call.stream_id, reset)
            self.schedule_flush()
        call._local_closed = True
        call._wake()
        call._wake_writer()
        pump = call._pump
        if pump is not None and pump is not asyncio.current_task():
            pump.cancel()

    def _response(self, event: h2.events.ResponseReceived) -> None:
        call = self.calls.get(event.stream_id or 0)
        if call is None:
            return
        headers = dict(event.headers or ())
        status = headers.get(b":status", b"")
        if status != b"200":
            code = _HTTP_CODES.get(status, grpc.StatusCode.UNKNOWN)
            self.finish(call, _rpc_error(code, f"the server answered HTTP status "
                                               f"{status.decode(errors='replace')}, not 200"),
                        reset=ErrorCodes.CANCEL)
        elif not headers.get(b"content-type", b"").startswith(b"application/grpc"):
            self.finish(call, _rpc_error(grpc.StatusCode.UNKNOWN, "the server answered "
                                         f"content-type {headers.get(b'content-type')!r}, not "
                                         "application/grpc"), reset=ErrorCodes.CANCEL)
        elif b"grpc-status" in headers:  # a trailers-only response
            call._trailers = list(event.headers or ())

    def _ended(self, stream_id: int | None) -> None:
        call = self.calls.get(stream_id or 0)
        if call is None:
            return
        reset = None if call._local_closed else ErrorCodes.CANCEL  # stop sending, it is over
        if not call._trailers:
            self.finish(call, _rpc_error(grpc.StatusCode.UNKNOWN, "the server ended the stream "
                                         "without a grpc-status trailer"), reset=reset)
            return
        code, message, _ = status_of(call._trailers)
        if call._reader.pending:
            self.finish(call, _rpc_error(grpc.StatusCode.INTERNAL, "the server ended the stream "
                                         "inside a message"), reset=reset)
        elif code == 0:
            self.finish(call, None, reset=reset)
        else:
            self.finish(call, _rpc_error(_CODES.get(code, grpc.StatusCode.UNKNOWN), message,
                                         _trailing_metadata(call._trailers)), reset=reset)

    def _reset_by_server(self, event: h2.events.StreamReset) -> None:
        call = self.calls.get(event.stream_id or 0)
        if call is None:
            return
        call._local_closed = True  # a reset stream is closed both ways
        code = _RESET_CODES.get(event.error_code or 0, grpc.StatusCode.INTERNAL)
        self.finish(call, _rpc_error(code, f"the server reset the stream (RST_STREAM "
                                           f"{_error_name(event.error_code)})"))

    def _goaway(self, event: h2.events.ConnectionTerminated) -> None:
        extra = f": {event.additional_data.decode(errors='replace')}" \
            if event.additional_data else ""
        self.abort(f"the server sent GOAWAY ({_error_name(event.error_code)}{extra}), last "
                   f"stream {event.last_stream_id}", goaway_received=True)

    def _expire(self, call: H2Call) -> None:
        self.finish(call, _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
                    reset=ErrorCodes.CANCEL)

    def _fail_all(self, why: str, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        if self.closed_why is None:
            self.closed_why = why
        for call in list(self.calls.values()):
            self.finish(call, _rpc_error(code, why))

    def abort(self, why: str, *, goaway_received: bool = False,
              code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        """Fail every call with ``why``, say GOAWAY (unless the server did) and close."""
        self._fail_all(why, code)
        if not goaway_received:
            with contextlib.suppress(h2.exceptions.H2Error):  # already closed
                self.h2.close_connection()
        self.flush()
        if self.transport is not None:
            self.transport.close()


class _UnaryUnary:
    """``channel.unary_unary(...)``: ``await multicallable(request, timeout=...)``."""

    def __init__(self, conn: _Connection, path: str, serialize: Callable[[Any], bytes] | None,
                 deserialize: Callable[[bytes], Any] | None) -> None:
        self._conn, self._path = conn, path
        self._serialize, self._deserialize = serialize, deserialize

    async def __call__(self, request: Any, *, timeout: float | None = None) -> Any:
        call = H2Call(self._conn, self._serialize, self._deserialize)
        self._conn.open(call, self._path, timeout)
        try:
            await call.write(request)
            await call.done_writing()
            response = await call.read()
            if response is grpc.aio.EOF:
                raise _rpc_error(grpc.StatusCode.INTERNAL, "the server sent no response message "
                                 "to a unary call")
            if await call.read() is not grpc.aio.EOF:
                raise _rpc_error(grpc.StatusCode.INTERNAL, "the server sent more than one "
                                 "response message to a unary call")
            return response
        finally:
            call.cancel()  # a no-op once it ended; frees the stream if we gave up


class _StreamStream:
    """``channel.stream_stream(...)``: ``multicallable()`` (write/read) or
    ``multicallable(request_iterator)``."""

    def __init__(self, conn: _Connection, path: str, serialize: Callable[[Any], bytes] | None,
                 deserialize: Callable[[bytes], Any] | None) -> None:
        self._conn, self._path = conn, path
        self._serialize, self._deserialize = serialize, deserialize

    def __call__(self, request_iterator: AsyncIterator[Any] | None = None, *,
                 timeout: float | None = None) -> H2Call:
        call = H2Call(self._conn, self._serialize, self._deserialize)
        self._conn.open(call, self._path, timeout)
        if request_iterator is not None and not call.done():
            call._pump = self._conn.loop.create_task(call._send_all(request_iterator))
        return call


class H2Channel:
    """A gRPC channel on one HTTP/2 connection over a Unix socket (grpc.aio's API subset).

        channel = await H2Channel.connect("/tmp/w/s/0/sink.sock")
        sink = await SinkClient.open(channel)
        await channel.close()
    """

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn

    @classmethod
    async def connect(cls, socket_path: str, *, authority: str = "[::1]:50051",
                      max_message_bytes: int = 64 * 1024 * 1024) -> H2Channel:
        """Connect and wait for the server's SETTINGS (raises OSError when it cannot)."""
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_unix_connection(
            lambda: _Connection(authority, max_message_bytes), socket_path)
        try:
            await conn.settings_received
        except BaseException:
            conn.abort("the connection attempt was given up")
            raise
        return cls(conn)

    def unary_unary(self, method: str, request_serializer: Callable[[Any], bytes] | None = None,
                    response_deserializer: Callable[[bytes], Any] | None = None,
                    _registered_method: bool = False) -> _UnaryUnary:
        return _UnaryUnary(self._conn, method, request_serializer, response_deserializer)

    def stream_stream(self, method: str, request_serializer: Callable[[Any], bytes] | None = None,
                      response_deserializer: Callable[[bytes], Any] | None = None,
                      _registered_method: bool = False) -> _StreamStream:
        return _StreamStream(self._conn, method, request_serializer, response_deserializer)

    @property
    def closed(self) -> bool:
        """True once no new call can start (closed, GOAWAY, connection lost)."""
        return self._conn.closed_why is not None

    async def close(self) -> None:
        """Cancel the calls in flight, send GOAWAY and close the socket."""
        conn = self._conn
        if conn.transport is not None:
            conn.abort("the channel was closed", code=grpc.StatusCode.CANCELLED)
            await asyncio.wait({conn.lost}, timeout=1.0)
