"""The TCP listener behind a Wallaroo ``TCPSourceConfig``: framed messages with offsets, ack/nack.

:class:`TcpFrameSource` accepts any number of client connections, splits each byte stream with
Wallaroo's framing (:class:`~nfbuilder.runtime.framing.FrameParser`) and keeps the frames for
Numaflow's Read/Ack/Nack protocol. It applies back-pressure through TCP itself: when too many
frames wait to be read or acked, it stops reading from every client socket, the kernel buffers
fill, and the senders block.

    source = TcpFrameSource("0.0.0.0", 7010, 4, lambda h: struct.unpack(">I", h)[0])
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

from nfbuilder.runtime.framing import DEFAULT_MAX_FRAME, FrameParser, FramingError

__all__ = ["Frame", "TcpFrameSource"]

_LOG = logging.getLogger("nfbuilder.runtime.tcp")

# Resume reading once pending + unacked has fallen to this fraction of max_unacked: a gap between
# the pause and resume levels stops the sockets from flapping on every single ack.
_RESUME_FRACTION = 0.75


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
    - Back-pressure: when ``pending() + unacked() >= max_unacked`` every client transport stops
      reading; reading resumes at 75 % of ``max_unacked``. The bound can be passed by at most the
      frames in one socket read (asyncio reads up to 256 KiB at a time), so memory stays bounded.
    - A connection whose bytes break the framing (or that ends mid-frame) is logged and closed on
      its own; frames it completed before stay deliverable; other connections are unaffected.

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
        log: logging.Logger | None = None,
    ) -> None:
        if isinstance(max_unacked, bool) or not isinstance(max_unacked, int) or max_unacked < 1:
            raise ValueError(f"max_unacked must be an int >= 1, got {max_unacked!r}")
        # Validates header_length/max_frame now rather than on the first connection.
        FrameParser(header_length, payload_length, max_frame)
        self._host = host
        self._port = port
        self._header_length = header_length
        self._payload_length = payload_length
        self._max_frame = max_frame
        self._max_unacked = max_unacked
        self._resume_at = int(max_unacked * _RESUME_FRACTION)
        self._log = log or _LOG
        self._server: asyncio.Server | None = None
        self._conns: set[_Connection] = set()
        self._next_conn_id = time.time_ns() // 1000
        self._arrival = 0  # global arrival number: the order nacked frames are re-read in
        self._fresh: deque[tuple[int, Frame]] = deque()
        self._redeliver: list[tuple[int, Frame]] = []  # heap by arrival number
        self._unacked: dict[bytes, tuple[int, Frame]] = {}
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
            self._unacked.pop(bytes(offset), None)
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
        if self._paused or self._stopped:
            conn.pause()
        if self._stopped:
            conn.close()
        return conn_id

    def _connection_lost(self, conn: _Connection) -> None:
        self._conns.discard(conn)

    def _deliver(self, conn_id: int, first_seq: int, payloads: list[bytes], now_ns: int) -> None:
        for i, payload in enumerate(payloads):
            frame = Frame(b"%d:%d" % (conn_id, first_seq + i), payload, now_ns)
            self._fresh.append((self._arrival, frame))
            self._arrival += 1
        if payloads and self._available is not None:
            self._available.set()
        if not self._paused and self.pending() + self.unacked() >= self._max_unacked:
            self._paused = True
            self._log.debug(
                "TCP source: %d frames pending or unacked (max_unacked=%d), pausing %d "
                "connection(s)",
                self.pending() + self.unacked(),
                self._max_unacked,
                len(self._conns),
            )
            for c in self._conns:
                c.pause()

    def _maybe_resume(self) -> None:
        if self._paused and self.pending() + self.unacked() <= self._resume_at:
            self._paused = False
            self._log.debug("TCP source: resuming %d connection(s)", len(self._conns))
            for c in self._conns:
                c.resume()


class _Connection(asyncio.Protocol):
    """One client connection: its own parser and sequence numbers."""

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

    def eof_received(self) -> bool:
        self._check_end()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self._done:
            self._log.debug("TCP source: connection %d from %s lost: %s", self._conn_id,
                            self._peer, exc)
        self._check_end()
        self._source._connection_lost(self)

    def pause(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def close(self) -> None:
        self._done = True
        if self._transport is not None:
            self._transport.close()

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
