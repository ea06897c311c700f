"""The TCP listener behind a Wallaroo ``TCPSourceConfig``: framed messages with offsets, ack/nack.

:class:`TcpFrameSource` accepts any number of client connections, splits each byte stream with
Wallaroo's framing (:class:`~nfbuilder.runtime.framing.FrameParser`) and keeps the frames for
Numaflow's Read/Ack/Nack protocol. Its memory is bounded in bytes, and it applies back-pressure
through TCP itself: when it stops reading a client socket, the kernel buffers fill and that
sender blocks. Two bounds, each with its own setting:

- **Frames held** (complete frames pending, read but not acked, or nacked for redelivery):
  when their payloads reach ``max_buffered_bytes`` (``NFBUILDER_SOURCE_BUFFER_BYTES``, default
  64 MiB), or their number reaches ``max_unacked``, every connection stops reading; reading
  resumes once both have fallen to 75 % of their bound (acks make room; nacks do not).
- **Partial frames** (what each connection holds of a frame not yet complete: part of a
  header, or less than ``max_frame`` payload bytes): when their total over all connections
  reaches ``max_partial_bytes`` (``NFBUILDER_SOURCE_PARTIAL_BYTES``, default 64 MiB), a
  connection that holds a partial frame after a read stops reading and queues, except one, the
  *leader*, which keeps reading until it completes a frame (or closes); then the longest-queued
  connection becomes the leader. So progress never waits for the total to fall, and every
  queued connection gets its turn (first in, first out) even while others stream without
  pause. Once the total has fallen to 75 % of the bound, every queued connection resumes. A
  connection at a frame boundary keeps reading.

``max_frame`` (``NFBUILDER_MAX_FRAME``, default 16 MiB) is the largest payload one frame may
declare; a connection whose header declares more is closed, alone.

The bounds can be passed only by what one socket read brings (asyncio and uvloop read up to
256 KiB at a time): frames held stay under ``max_buffered_bytes`` plus the frames one read
completes; partial frames stay under ``max_partial_bytes`` + ``max_frame`` (the leader's frame)
+ one read per connection. A frame moving from partial to held costs no new memory. (uvloop
starts reading a new connection even when it was paused on arrival: that is its one read.)
:attr:`TcpFrameSource.buffered_bytes` and :attr:`TcpFrameSource.partial_bytes` report both.

A leader whose client stops sending mid-frame holds up the queued connections until it sends
more or disconnects: the bound is on memory, and waiting is the price of staying inside it.

    source = TcpFrameSource("0.0.0.0", 7010, 4, lambda h: struct.unpack(">I", h)[0],
                            max_frame=2**20, max_buffered_bytes=32 * 2**20)
    await source.start()
    frames = await source.read(500, timeout_s=1.0)
    source.ack(f.offset for f in frames)
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import cast

import attrs

from nfbuilder.runtime.framing import (
    DEFAULT_MAX_BUFFERED_BYTES,
    DEFAULT_MAX_FRAME,
    DEFAULT_MAX_PARTIAL_BYTES,
    FrameParser,
    FramingError,
)

__all__ = ["Frame", "TcpFrameSource"]

_LOG = logging.getLogger("nfbuilder.runtime.tcp")

# Resume reading once a bound's measure has fallen to this fraction of it: a gap between the
# pause and resume levels stops the sockets from flapping on every single ack.
_RESUME_FRACTION = 0.75


def _check_bound(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


@attrs.frozen
class Frame:
    """One framed message: ``offset`` is ``b"<conn id>:<seq>"``, ``payload`` has no header.

    ``event_time_ns`` is when the bytes were received (``time.time_ns()``), Wallaroo having no
    event time of its own.

        Frame(offset=b"17:0", payload=b"hello", event_time_ns=1_700_000_000_000_000_000)
    """

    offset: bytes
    payload: bytes
    event_time_ns: int


class TcpFrameSource:
    """Listen on ``host:port``, frame every connection's bytes, serve them as read/ack/nack.

    - Offsets are ``b"<conn id>:<seq>"``; conn ids increase for each accepted connection and start
      from the process start time in microseconds, so a restarted source never reuses an offset
      Numaflow may still hold in flight (it drops duplicate in-flight offsets).
    - ``nack`` puts frames back, with their offsets, ahead of newer frames and in arrival order.
    - Back-pressure, as the module docstring details: every client transport stops reading when
      the frames held reach ``max_unacked`` frames or ``max_buffered_bytes`` payload bytes, and
      resumes at 75 % of both; connections holding a partial frame queue (all but one leader)
      while partial frames total ``max_partial_bytes`` or more.
    - A connection whose bytes break the framing (a length above ``max_frame`` included, or that
      ends mid-frame) is logged and closed on its own; frames it completed before stay
      deliverable; other connections are unaffected.

        source = TcpFrameSource("127.0.0.1", 0, 4, lambda h: int.from_bytes(h, "big"))
        await source.start()
        host, port = source.address
        frames = await source.read(100, timeout_s=0.5)
        source.nack([frames[0].offset])     # read again by the next read()
        await source.stop()
    """

    def __init__(
        self,
        host: str,
        port: int,
        header_length: int,
        payload_length: Callable[[bytes], int],
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_unacked: int = 10_000,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
        max_partial_bytes: int = DEFAULT_MAX_PARTIAL_BYTES,
        log: logging.Logger | None = None,
    ) -> None:
        self._max_unacked = _check_bound("max_unacked", max_unacked)
        self._max_buffered_bytes = _check_bound("max_buffered_bytes", max_buffered_bytes)
        self._max_partial_bytes = _check_bound("max_partial_bytes", max_partial_bytes)
        # Validates header_length/max_frame now rather than on the first connection.
        FrameParser(header_length, payload_length, max_frame)
        self._host = host
        self._port = port
        self._header_length = header_length
        self._payload_length = payload_length
        self._max_frame = max_frame
        self._resume_at = int(max_unacked * _RESUME_FRACTION)
        self._resume_at_bytes = int(max_buffered_bytes * _RESUME_FRACTION)
        self._partial_resume_at = int(max_partial_bytes * _RESUME_FRACTION)
        self._log = log or _LOG
        self._server: asyncio.Server | None = None
        self._conns: set[_Connection] = set()
        self._next_conn_id = time.time_ns() // 1000
        self._arrival = 0  # global arrival number: the order nacked frames are re-read in
        self._fresh: deque[tuple[int, Frame]] = deque()
        self._redeliver: list[tuple[int, Frame]] = []  # heap by arrival number
        self._unacked: dict[bytes, tuple[int, Frame]] = {}
        self._held_bytes = 0  # payload bytes in _fresh, _redeliver and _unacked
        self._partial_total = 0  # sum of every connection's partial frame bytes
        self._partial_over = False  # the partial bound was reached and not yet left
        self._leader: _Connection | None = None  # reads on while _partial_over
        self._queued: dict[_Connection, None] = {}  # waiting for their turn, oldest first
        self._available: asyncio.Event | None = None
        self._paused = False
        self._stopped = False

    async def start(self) -> None:
        """Bind and listen (``port`` 0 picks a free port; see :attr:`address`)."""
        if self._server is not None:
            raise RuntimeError("TcpFrameSource.start() was already called")
        self._available = asyncio.Event()
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: _Connection(self), self._host, self._port, reuse_address=True
            )
        except OSError as exc:
            # asyncio rewords bind errors; the plain strerror reads better in our sentence.
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise OSError(
                exc.errno,
                f"TCP source cannot listen on {self._host}:{self._port}: {reason}; "
                "check that no other process uses this port and that the host is an address of "
                "this machine (0.0.0.0 listens on all of them)",
            ) from exc
        self._log.info("TCP source listening on %s:%d", *self.address)

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``, e.g. to learn the port picked for port 0."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("TcpFrameSource.address is known only after start()")
        name = self._server.sockets[0].getsockname()
        return str(name[0]), int(name[1])

    @property
    def buffered_bytes(self) -> int:
        """Payload bytes of the frames held: pending, read and not acked, or nacked."""
        return self._held_bytes

    @property
    def partial_bytes(self) -> int:
        """Bytes held of frames not yet complete, over all connections (see the module doc)."""
        return self._partial_total

    async def read(self, num_records: int, timeout_s: float) -> list[Frame]:
        """Return up to ``num_records`` frames, nacked ones first; ``[]`` if none in ``timeout_s``.

        Waits at most ``timeout_s`` for the first frame, then returns what is there at once.
        """
        if num_records < 1:
            return []
        if self._available is None:
            raise RuntimeError("TcpFrameSource.read() called before start()")
        if not self.pending() and not self._stopped:
            self._available.clear()
            try:
                await asyncio.wait_for(self._available.wait(), max(timeout_s, 0.0))
            except asyncio.TimeoutError:
                return []
            # Let reads that are already due land, so a burst makes one batch rather than many.
            await asyncio.sleep(0)
        out: list[Frame] = []
        while len(out) < num_records and (self._redeliver or self._fresh):
            entry = heapq.heappop(self._redeliver) if self._redeliver else self._fresh.popleft()
            self._unacked[entry[1].offset] = entry
            out.append(entry[1])
        return out

    def ack(self, offsets: Iterable[bytes]) -> None:
        """Forget these read frames (unknown offsets are ignored: acks may be repeated)."""
        for offset in offsets:
            entry = self._unacked.pop(bytes(offset), None)
            if entry is not None:
                self._held_bytes -= len(entry[1].payload)
        self._maybe_resume()

    def nack(self, offsets: Iterable[bytes]) -> None:
        """Put these read frames back to be read again, same offsets, before any newer frame."""
        for offset in offsets:
            entry = self._unacked.pop(bytes(offset), None)
            if entry is not None:
                heapq.heappush(self._redeliver, entry)
        if self._redeliver and self._available is not None:
            self._available.set()

    def pending(self) -> int:
        """Frames received (or nacked) and not yet read."""
        return len(self._fresh) + len(self._redeliver)

    def unacked(self) -> int:
        """Frames read and neither acked nor nacked."""
        return len(self._unacked)

    async def stop(self) -> None:
        """Close the listener and every connection; frames already received stay readable."""
        self._stopped = True
        if self._available is not None:
            self._available.set()  # a read waiting for data returns at once
        for conn in list(self._conns):
            conn.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # -- called by _Connection -------------------------------------------------------------

    def _connection_made(self, conn: _Connection) -> int:
        conn_id = self._next_conn_id
        self._next_conn_id += 1
        self._conns.add(conn)
        conn.sync_reading()
        if self._stopped:
            conn.close()
        return conn_id

    def _connection_lost(self, conn: _Connection) -> None:
        self._conns.discard(conn)

    def _may_read(self, conn: _Connection) -> bool:
        return not self._paused and conn not in self._queued

    def _deliver(self, conn_id: int, first_seq: int, payloads: list[bytes], now_ns: int) -> None:
        for i, payload in enumerate(payloads):
            frame = Frame(b"%d:%d" % (conn_id, first_seq + i), payload, now_ns)
            self._fresh.append((self._arrival, frame))
            self._arrival += 1
            self._held_bytes += len(payload)
        if payloads and self._available is not None:
            self._available.set()
        held = self.pending() + self.unacked()
        if not self._paused and (
            held >= self._max_unacked or self._held_bytes >= self._max_buffered_bytes
        ):
            self._paused = True
            self._log.debug(
                "TCP source: %d frames of %d bytes pending or unacked (max_unacked=%d, "
                "max_buffered_bytes=%d), pausing %d connection(s)",
                held, self._held_bytes, self._max_unacked, self._max_buffered_bytes,
                len(self._conns),
            )
            for c in self._conns:
                c.sync_reading()

    def _maybe_resume(self) -> None:
        if (
            self._paused
            and self.pending() + self.unacked() <= self._resume_at
            and self._held_bytes <= self._resume_at_bytes
        ):
            self._paused = False
            self._log.debug("TCP source: resuming %d connection(s)", len(self._conns))
            for c in self._conns:
                c.sync_reading()

    def _partial_changed(self, conn: _Connection, delta: int, completed: bool) -> None:
        """Account ``conn``'s partial frame growing by ``delta`` (after a read, or its end).

        ``completed``: the connection finished a frame in this read, or is gone, so it hands
        on the leader's turn.
        """
        self._partial_total += delta
        if not self._partial_over:
            if self._partial_total < self._max_partial_bytes:
                return
            self._partial_over = True
            self._log.debug(
                "TCP source: %d bytes of partial frames (max_partial_bytes=%d): connections "
                "with a partial frame take turns",
                self._partial_total, self._max_partial_bytes,
            )
        elif self._partial_total <= self._partial_resume_at:
            self._partial_over = False
            self._leader = None
            queued = list(self._queued)
            self._queued.clear()
            self._log.debug("TCP source: partial frames down to %d bytes, resuming %d "
                            "queued connection(s)", self._partial_total, len(queued))
            for c in queued:
                c.sync_reading()
            return
        if conn is self._leader and (completed or not conn.partial):
            self._leader = None
        if conn.partial and conn is not self._leader and not conn.closed:
            self._queued[conn] = None
        if self._leader is None and self._queued:
            self._leader = next(iter(self._queued))
            del self._queued[self._leader]
            self._leader.sync_reading()
        conn.sync_reading()

    def _forget_partial(self, conn: _Connection) -> None:
        """``conn`` is closed: its partial frame no longer counts, and it gives up its turn."""
        self._queued.pop(conn, None)
        self._partial_changed(conn, -conn.partial, completed=True)


class _Connection(asyncio.Protocol):
    """One client connection: its own parser, sequence numbers and partial-frame size."""

    def __init__(self, source: TcpFrameSource) -> None:
        self._source = source
        self._parser = FrameParser(
            source._header_length, source._payload_length, source._max_frame
        )
        self._log = source._log
        self._transport: asyncio.Transport | None = None
        self._conn_id = -1
        self._peer = "?"
        self._seq = 0
        self._done = False  # the stream was checked (EOF) or rejected: report nothing more
        self.partial = 0  # bytes of the frame being received, as counted by the source
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast, not a check.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._conn_id = self._source._connection_made(self)
        self._log.debug("TCP source: connection %d from %s", self._conn_id, self._peer)

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        try:
            payloads = self._parser.feed(data)
        except FramingError as err:
            self._emit(list(err.frames))
            self._reject(str(err))
            return
        self._emit(payloads)
        before, self.partial = self.partial, self._parser.buffered()
        self._source._partial_changed(self, self.partial - before, bool(payloads))
        # uvloop starts reading after connection_made even if it paused the transport, so a
        # connection accepted while the source is paused is paused here, after its first read.
        self.sync_reading()

    def eof_received(self) -> bool:
        self._check_end()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self._done:
            self._log.debug("TCP source: connection %d from %s lost: %s", self._conn_id,
                            self._peer, exc)
        self._check_end()
        self._release()
        self._source._connection_lost(self)

    def sync_reading(self) -> None:
        """Pause or resume the transport to match what the source allows this connection."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        want = not self.closed and self._source._may_read(self)
        if want != transport.is_reading():
            if want:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def close(self) -> None:
        self._done = True
        self._release()
        if self._transport is not None:
            self._transport.close()

    def _release(self) -> None:
        if not self.closed:
            self.closed = True
            self._source._forget_partial(self)
            self.partial = 0

    def _emit(self, payloads: list[bytes]) -> None:
        if payloads:
            self._source._deliver(self._conn_id, self._seq, payloads, time.time_ns())
            self._seq += len(payloads)

    def _check_end(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._parser.at_eof()
        except FramingError as err:
            self._reject(str(err))
            return
        self._log.debug(
            "TCP source: connection %d from %s closed after %d frames",
            self._conn_id, self._peer, self._seq,
        )

    def _reject(self, reason: str) -> None:
        self._log.warning(
            "TCP source: closing connection %d from %s after %d good frames: %s",
            self._conn_id, self._peer, self._seq, reason,
        )
        self.close()
