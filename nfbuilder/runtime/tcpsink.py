"""The TCP writer behind a Wallaroo ``TCPSinkConfig``: one persistent, reconnecting connection.

Wallaroo writes each encoded output to the socket as is (no framing added) and reconnects when the
receiver goes away; its reconnect logic dropped data meanwhile. Here a chunk that could not be
written is reported as failed, so the Numaflow sink answers FAILURE for it and numa re-sends it.

    writer = TcpSinkWriter("receiver", 7002)
    ok = await writer.write([b"a\\n", b"b\\n"])    # [True, True], or False from a failure on
    await writer.close()
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import cast

__all__ = ["TcpSinkWriter"]

_LOG = logging.getLogger("nfbuilder.runtime.tcp")


#: how many bytes of chunks :meth:`TcpSinkWriter.write` sends in one write
GROUP_BYTES = 64 * 1024


class TcpSinkWriter:
    """Write byte chunks, in order, over one lazily opened TCP connection to ``host:port``.

    ``write`` returns one bool per chunk: ``True`` once the chunk was handed to the kernel (the
    connection's user-space buffer is flushed before a chunk counts). When the connection cannot be
    opened, breaks, or the peer closes it, that chunk and every later one in the call are ``False``
    and nothing is raised. Connection attempts after a failure are spaced by an exponential
    backoff (``backoff_initial_s`` doubling up to ``backoff_max_s``); a ``write`` during the backoff
    returns all ``False`` at once instead of hammering a down peer.

    The guarantee towards the peer is **at-least-once**, like any Numaflow sink: bytes accepted by
    the kernel just before the peer dies can still be lost in socket buffers (they counted as
    written), and a chunk reported ``False`` may have partly reached the peer before the failure
    and will be sent again when numa retries it.

    Bytes the peer sends back are read and discarded (so they cannot fill a buffer); the peer
    closing its side (EOF) is taken as the connection ending.

        writer = TcpSinkWriter("127.0.0.1", 7002, connect_timeout_s=1.0)
        results = await writer.write([b"one\\n", b"two\\n"])
        await writer.close()
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout_s: float = 2.0,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
        log: logging.Logger | None = None,
    ) -> None:
        if connect_timeout_s <= 0:
            raise ValueError(f"connect_timeout_s must be > 0, got {connect_timeout_s!r}")
        if backoff_initial_s < 0 or backoff_max_s < backoff_initial_s:
            raise ValueError(
                "backoff must satisfy 0 <= backoff_initial_s <= backoff_max_s, got "
                f"backoff_initial_s={backoff_initial_s!r}, backoff_max_s={backoff_max_s!r}"
            )
        self._host = host
        self._port = port
        self._connect_timeout_s = connect_timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._log = log or _LOG
        self._conn: _SinkConnection | None = None
        self._backoff_s = 0.0  # delay before the next attempt; 0 while things work
        self._retry_at = 0.0  # loop time before which no connection is attempted
        self._failures = 0  # consecutive failed attempts, to log the first one loudly only
        self._lock: asyncio.Lock | None = None

    async def write(self, chunks: Sequence[bytes]) -> list[bool]:
        """Write ``chunks`` in order; ``result[i]`` says whether chunk ``i`` reached the kernel.

        Chunks go out in groups of up to :data:`GROUP_BYTES` (one write and one wait for the
        kernel per group, not per chunk); a connection failing during a group fails that group
        and the ones after it, to be retried."""
        for i, chunk in enumerate(chunks):
            if not isinstance(chunk, (bytes, bytearray, memoryview)):
                raise TypeError(
                    f"TcpSinkWriter.write expects bytes chunks, chunk {i} is "
                    f"{type(chunk).__name__}: {chunk!r:.80}; the encoder must return bytes"
                )
        if self._lock is None:
            self._lock = asyncio.Lock()
        results = [False] * len(chunks)
        # Concurrent calls would interleave their chunks on the one stream: take turns.
        async with self._lock:
            start = 0
            while start < len(chunks):
                end, size = start, 0
                while end < len(chunks) and (end == start or size < GROUP_BYTES):
                    size += len(chunks[end])
                    end += 1
                conn = await self._connected()
                if conn is None:
                    break
                try:
                    conn.transport.write(b"".join(chunks[start:end]))
                    await conn.flushed()
                except ConnectionError as exc:
                    self._log.warning(
                        "TCP sink: connection to %s:%d failed after writing %d of %d chunks: %s; "
                        "the rest are reported as failed and will be retried",
                        self._host, self._port, start, len(chunks), exc,
                    )
                    self._drop(conn)
                    self._schedule_retry(first=True)
                    break
                results[start:end] = [True] * (end - start)
                start = end
        return results

    async def close(self) -> None:
        """Close the connection (a later ``write`` opens a new one)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.transport.close()
            await conn.wait_closed(self._connect_timeout_s)

    async def _connected(self) -> _SinkConnection | None:
        conn = self._conn
        if conn is not None and not conn.broken:
            return conn
        if conn is not None:
            self._log.info(
                "TCP sink: connection to %s:%d ended (%s); reconnecting",
                self._host, self._port, conn.reason,
            )
            self._drop(conn)
        loop = asyncio.get_running_loop()
        if loop.time() < self._retry_at:
            return None
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(_SinkConnection, self._host, self._port),
                self._connect_timeout_s,
            )
        except (OSError, asyncio.TimeoutError) as exc:
            self._failures += 1
            self._schedule_retry(first=False)
            reason = str(exc) or type(exc).__name__
            # The first failure of a streak is worth a warning; the retries are not.
            self._log.log(
                logging.WARNING if self._failures == 1 else logging.DEBUG,
                "TCP sink: cannot connect to %s:%d (attempt %d): %s; retrying in %.2f s",
                self._host, self._port, self._failures, reason, self._backoff_s,
            )
            return None
        if self._failures:
            self._log.info(
                "TCP sink: connected to %s:%d after %d failed attempts",
                self._host, self._port, self._failures,
            )
        self._failures = 0
        self._backoff_s = 0.0
        self._retry_at = 0.0
        self._conn = conn
        return conn

    def _schedule_retry(self, *, first: bool) -> None:
        # A connection that just broke may be replaced at once (the peer may already be back);
        # failed attempts back off exponentially.
        if first:
            self._backoff_s = 0.0
            self._retry_at = 0.0
            return
        if self._backoff_s == 0.0:
            self._backoff_s = self._backoff_initial_s
        else:
            self._backoff_s = min(self._backoff_s * 2, self._backoff_max_s)
        self._retry_at = asyncio.get_running_loop().time() + self._backoff_s

    def _drop(self, conn: _SinkConnection) -> None:
        conn.transport.abort()
        if self._conn is conn:
            self._conn = None


class _SinkConnection(asyncio.Protocol):
    """Flow control for one sink connection: wait until written bytes have reached the kernel."""

    transport: asyncio.Transport

    def __init__(self) -> None:
        self.broken = False
        self.reason = ""
        self._can_write: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast, not a check.
        self.transport = cast(asyncio.Transport, transport)
        # high=0: the transport pauses us whenever anything is left in its own buffer, so
        # flushed() returns only when every byte written so far is in the kernel.
        self.transport.set_write_buffer_limits(high=0)

    def data_received(self, data: bytes) -> None:
        pass  # a TCP sink receiver has nothing to tell us; discard rather than buffer

    def eof_received(self) -> bool:
        self._break("the peer closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._break(str(exc) if exc else "connection closed")
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        if self._can_write is None or self._can_write.done():
            self._can_write = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._can_write is not None and not self._can_write.done():
            self._can_write.set_result(None)

    async def flushed(self) -> None:
        """Return once the transport's buffer is empty; raise ConnectionError if it broke."""
        if self.broken:
            raise ConnectionResetError(self.reason)
        if self._can_write is not None and not self._can_write.done():
            await self._can_write
        if self.broken:
            raise ConnectionResetError(self.reason)

    async def wait_closed(self, timeout_s: float) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self._closed), timeout_s)
        except asyncio.TimeoutError:
            self.transport.abort()

    def _break(self, reason: str) -> None:
        if not self.broken:
            self.broken = True
            self.reason = reason
        # A writer waiting in flushed() must learn about the break now.
        if self._can_write is not None and not self._can_write.done():
            self._can_write.set_result(None)
