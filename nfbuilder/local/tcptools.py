"""A framed-message sender and a collecting receiver, like Wallaroo's giles tools, for demos and
tests of apps on the embedded engine::

    rx = await TcpReceiver.start()
    await send_frames(("127.0.0.1", 7010), frames)
    await rx.wait_for(lambda data: data.count(b"\\n") >= 10, timeout_s=30)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable


class TcpReceiver:
    """Accepts any number of connections and keeps what each one sent, in arrival order."""

    def __init__(self) -> None:
        self.chunks: list[bytearray] = []
        self.server: asyncio.Server | None = None
        self.paused = asyncio.Event()

    @classmethod
    async def start(cls, host: str = "127.0.0.1", port: int = 0) -> TcpReceiver:
        rx = cls()
        rx.server = await asyncio.start_server(rx._serve, host, port)
        return rx

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return host, port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = bytearray()
        self.chunks.append(buf)
        try:
            while True:
                # A paused receiver stops reading: TCP pushes back. Polled because callers
                # toggle ``paused`` and there is no "resumed" event to await.
                while self.paused.is_set():  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                data = await reader.read(65536)
                if not data:
                    break
                buf.extend(data)
        except ConnectionError:
            pass
        finally:
            writer.close()

    def per_connection(self) -> list[bytes]:
        return [bytes(c) for c in self.chunks]

    def data(self) -> bytes:
        return b"".join(self.per_connection())

    async def wait_for(self, done: Callable[[bytes], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if done(self.data()):
                return True
            await asyncio.sleep(0.05)
        return done(self.data())

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def send_frames(address: tuple[str, int], frames: Iterable[bytes], *,
                      connect_timeout_s: float = 10.0) -> int:
    """Connect (retrying until the listener is up) and write every frame; returns bytes sent."""
    deadline = time.monotonic() + connect_timeout_s
    while True:
        try:
            _, writer = await asyncio.open_connection(*address)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
    sent = 0
    for frame in frames:
        writer.write(frame)
        sent += len(frame)
        if writer.transport.get_write_buffer_size() > 1 << 20:
            await writer.drain()
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    return sent
