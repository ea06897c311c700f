"""The TCP source's byte bounds: frames held, partial frames, ``max_frame``, and their settings.

Real TCP on 127.0.0.1. Clients are threads with blocking sockets, so a paused source really
blocks them; the source's own accounting (``buffered_bytes``, ``partial_bytes``) is checked after
every socket read through a probe on ``data_received``, and against tracemalloc once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import threading
import time
import tracemalloc
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import test_tcp_io as tcp_io
from test_tcp_io import LOOPS, be32, framed

from nfbuilder.runtime import tcpsource
from nfbuilder.runtime.settings import Settings, SettingsError
from nfbuilder.runtime.tcp import (
    DEFAULT_MAX_BUFFERED_BYTES,
    DEFAULT_MAX_FRAME,
    DEFAULT_MAX_PARTIAL_BYTES,
    Frame,
    TcpFrameSource,
)

T = TypeVar("T")

MiB = 2**20
READ = 256 * 1024  # the most one socket read brings (asyncio: 256 KiB, uvloop: 250 kB)
HEADER = 4


def run(coro: Coroutine[Any, Any, T], loop_kind: str = "asyncio") -> T:
    """``test_tcp_io.run`` with room for the bigger transfers here."""
    return tcp_io.run(coro, loop_kind, limit_s=30.0)


#: ``test_tcp_io.poll`` with room for the bigger transfers here
poll = functools.partial(tcp_io.poll, timeout_s=15.0)


class Probe:
    """What the source's accounting said after each socket read, and whether it was honest."""

    def __init__(self) -> None:
        self.reads = 0
        self.reads_by: dict[tcpsource._Connection, int] = {}
        self.max_partial = 0
        self.max_buffered = 0
        self.errors: list[str] = []


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> Iterator[Probe]:
    p = Probe()
    original = tcpsource._Connection.data_received

    def data_received(conn: tcpsource._Connection, data: bytes) -> None:
        original(conn, data)
        source = conn._source
        p.reads += 1
        p.reads_by[conn] = p.reads_by.get(conn, 0) + 1
        p.max_partial = max(p.max_partial, source.partial_bytes)
        p.max_buffered = max(p.max_buffered, source.buffered_bytes)
        # The accounting must match what the parsers really hold.
        real = sum(c._parser.buffered() for c in source._conns if not c.closed)
        if real != source.partial_bytes:
            p.errors.append(f"partial_bytes {source.partial_bytes} but parsers hold {real}")

    monkeypatch.setattr(tcpsource._Connection, "data_received", data_received)
    yield p
    assert not p.errors, p.errors[:5]


class Client(threading.Thread):
    """Send ``first``, wait for ``go``, send ``then``; hold the socket open until ``done``."""

    def __init__(self, address: tuple[str, int], first: memoryview, then: memoryview,
                 go: threading.Event, done: threading.Event) -> None:
        super().__init__(daemon=True)
        self.address, self.first, self.then, self.go, self.done = address, first, then, go, done
        self.failure: OSError | None = None

    def run(self) -> None:
        try:
            with socket.create_connection(self.address) as s:
                s.sendall(self.first)
                self.go.wait()
                s.sendall(self.then)
                self.done.wait()
        except OSError as exc:  # reported by the test
            self.failure = exc


async def read_acking(source: TcpFrameSource, n: int, timeout_s: float = 20.0) -> list[Frame]:
    got: list[Frame] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n:
        assert time.monotonic() < deadline, f"only {len(got)} of {n} frames arrived"
        batch = await source.read(500, 0.2)
        got += batch
        source.ack(f.offset for f in batch)
    return got


def conn_seq(frame: Frame) -> tuple[int, int]:
    conn, seq = (int(x) for x in frame.offset.split(b":"))
    return conn, seq


# ------------------------------------------------------------------------------- partial frames


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_many_clients_holding_partial_frames_stay_under_the_partial_bound(
    loop_kind: str, probe: Probe
) -> None:
    # 16 clients each send all but the last byte of a 2 MiB frame: 32 MiB if nothing bounded it.
    clients, size = 16, 2 * MiB
    max_partial = 4 * MiB
    # The bound, the leader's whole frame, and one socket read per connection.
    bound = max_partial + size + clients * READ
    assert bound < clients * size * 2 // 5  # the test tells a bounded source from an unbounded
    blobs = [framed(b"%04d" % i + bytes([65 + i % 26]) * (size - 4)) for i in range(clients)]

    async def main() -> None:
        source = TcpFrameSource("127.0.0.1", 0, HEADER, be32, max_frame=size,
                                max_partial_bytes=max_partial)
        await source.start()
        go, done = threading.Event(), threading.Event()
        threads = [Client(source.address, memoryview(b)[:-1], memoryview(b)[-1:], go, done)
                   for b in blobs]
        try:
            tracemalloc.start()
            try:
                baseline = tracemalloc.get_traced_memory()[0]
                for t in threads:
                    t.start()

                # Steady state: each connection has read all it was sent, or waits its turn.
                def settled() -> bool:
                    return len(source._conns) == clients and all(
                        c.partial == size - 1 or c in source._queued for c in source._conns
                    )

                await poll(settled, what="every connection to read its bytes or queue")
                assert source.partial_bytes <= bound
                assert len(source._queued) >= clients - bound // size
                assert source._leader is not None and source._leader not in source._queued
                held_by_python = tracemalloc.get_traced_memory()[0] - baseline
                # Buffers may over-allocate by an eighth; the rest is the loop and the sockets.
                assert held_by_python <= bound * 9 // 8 + 2 * MiB, held_by_python
            finally:
                tracemalloc.stop()
            go.set()  # every client sends its last byte: the frames complete, turn by turn
            frames = await read_acking(source, clients)
            assert await source.read(10, 0.05) == []
            assert sorted(f.payload for f in frames) == [b[HEADER:] for b in blobs]
            assert len({conn_seq(f)[0] for f in frames}) == clients
            assert {conn_seq(f)[1] for f in frames} == {0}
            assert (source.partial_bytes, source.buffered_bytes) == (0, 0)
            assert not source._queued and not source._partial_over
            assert probe.max_partial <= bound
            assert all(t.failure is None for t in threads)
        finally:
            done.set()
            go.set()
            await source.stop()

    run(main(), loop_kind)


def test_partial_bound_gives_every_client_a_turn_while_one_streams(probe: Probe) -> None:
    size, head = MiB, 300 * 1024
    frame = framed(b"s" * size)
    stop = threading.Event()
    streamed: list[OSError] = []

    def streamer(address: tuple[str, int]) -> None:
        # Frames sent in 64 KiB + 1 chunks, which hardly ever end where a frame ends: the
        # source sees this client holding a partial frame after nearly every read.
        cycle = memoryview(frame * 2)
        pos = 0
        try:
            with socket.create_connection(address) as s:
                while not stop.is_set():
                    s.sendall(cycle[pos : pos + 65537])
                    pos = (pos + 65537) % len(frame)
        except OSError as exc:
            if not stop.is_set():
                streamed.append(exc)

    async def main() -> None:
        source = TcpFrameSource("127.0.0.1", 0, HEADER, be32, max_frame=size,
                                max_partial_bytes=size)
        await source.start()
        go, done = threading.Event(), threading.Event()
        # B, C and D each send the first 300 KiB of a frame (900 KiB: under the bound) ...
        others = [framed(bytes([c]) * size) for c in b"BCD"]
        threads = [Client(source.address, memoryview(b)[: HEADER + head],
                          memoryview(b)[HEADER + head :], go, done) for b in others]
        for t in threads:
            t.start()
        stream = threading.Thread(target=streamer, args=(source.address,), daemon=True)
        try:
            await poll(lambda: source.partial_bytes == 3 * head, what="three partial frames")
            waiting = set(source._conns)
            # ... then a client streams frames without pause: it takes the source over the bound,
            # so it leads, and it always holds a partial frame after a read.
            stream.start()
            await poll(lambda: source._leader is not None and source._leader not in waiting,
                       what="the streaming client to lead")
            go.set()  # the rest of B, C and D: each reads once more, then waits for a turn
            seen: set[bytes] = set()
            streamed_frames = 0
            deadline = time.monotonic() + 20.0
            while seen != {b"B", b"C", b"D"}:
                assert time.monotonic() < deadline, f"starved: only {sorted(seen)} arrived"
                batch = await source.read(500, 0.2)
                source.ack(f.offset for f in batch)
                for f in batch:
                    if f.payload[:1] == b"s":
                        streamed_frames += 1
                    else:
                        assert f.payload == f.payload[:1] * size
                        seen.add(f.payload[:1])
            assert streamed_frames > 0
            assert probe.max_partial <= size + size + 4 * READ
            assert not streamed and all(t.failure is None for t in threads)
        finally:
            stop.set()
            done.set()
            await source.stop()

    run(main())


def test_closed_connections_give_back_their_partial_bytes(probe: Probe) -> None:
    async def main() -> None:
        source = TcpFrameSource("127.0.0.1", 0, HEADER, be32, max_partial_bytes=1000)
        await source.start()
        try:
            _, a = await asyncio.open_connection(*source.address)
            a.write(framed(b"a" * 600)[:504])  # the header is parsed: 500 payload bytes held
            await poll(lambda: source.partial_bytes == 500, what="500 partial bytes")
            _, b = await asyncio.open_connection(*source.address)
            b.write(framed(b"b" * 900)[:704])  # reaches the bound: b reads on, as the leader
            await poll(lambda: source.partial_bytes == 1200, what="1200 partial bytes")
            assert source._partial_over and source._leader is not None
            assert source._leader.partial == 700 and not source._queued
            a.write(b"a")  # a reads once more, then waits for its turn
            await poll(lambda: len(source._queued) == 1, what="a to queue")
            assert [c.partial for c in source._queued] == [501]
            a.close()  # unnoticed while a waits: its reading is paused
            b.close()  # the leader ends mid-frame: 700 bytes given back, a resumes
            await poll(lambda: source.partial_bytes == 0, what="both cut frames forgotten")
            assert not source._queued and not source._partial_over and source._leader is None
            _, c = await asyncio.open_connection(*source.address)
            c.write(b"\x00\x00")
            await poll(lambda: source.partial_bytes == 2, what="a partial header")
        finally:
            await source.stop()
        assert source.partial_bytes == 0  # stop closed c mid-header
        assert await source.read(10, 0.05) == []

    run(main())


# ---------------------------------------------------------------------------------- frames held


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_big_frames_unacked_pause_reading_at_the_byte_bound_then_resume(
    loop_kind: str, probe: Probe
) -> None:
    size, per_client, clients = 64 * 1024, 160, 3  # 30 MiB in all
    max_buffered = 2 * MiB
    # One read (plus the partial frame it completes) may pass the bound before reading stops.
    bound = max_buffered + READ + HEADER + size

    def payload(client: int, i: int) -> bytes:
        return (b"%d:%06d:" % (client, i)).ljust(size, b".")

    streams = [b"".join(framed(payload(c, i)) for i in range(per_client)) for c in range(clients)]

    async def main() -> None:
        # A count bound far away: only bytes can stop the source here.
        source = TcpFrameSource("127.0.0.1", 0, HEADER, be32, max_frame=size,
                                max_buffered_bytes=max_buffered)
        await source.start()
        go, done = threading.Event(), threading.Event()
        threads = [Client(source.address, memoryview(b""), memoryview(s), go, done)
                   for s in streams]
        for t in threads:
            t.start()
        try:
            # All connected before any sends, so none is accepted while the source is paused.
            await poll(lambda: len(source._conns) == clients, what="every client to connect")
            go.set()
            held: list[Frame] = []
            await poll(lambda: source.buffered_bytes >= max_buffered, what="the byte bound")
            assert source._paused
            held += await source.read(500, 1.0)
            assert source.pending() == 0
            reads = probe.reads
            # Paused: nothing more is read however long we wait.
            assert await source.read(500, 0.3) == []
            assert probe.reads == reads
            assert source.buffered_bytes == len(held) * size
            assert max_buffered <= source.buffered_bytes <= bound
            assert len(held) < clients * per_client
            source.ack(f.offset for f in held)
            assert source.buffered_bytes == 0 and not source._paused
            frames = held + await read_acking(source, clients * per_client - len(held))
            assert await source.read(10, 0.05) == []
            assert probe.max_buffered <= bound
            assert source.buffered_bytes == 0
            assert len({f.offset for f in frames}) == clients * per_client  # exactly once
            by_conn: dict[int, list[tuple[int, bytes]]] = {}
            for f in frames:
                conn, seq = conn_seq(f)
                by_conn.setdefault(conn, []).append((seq, f.payload))
            assert len(by_conn) == clients
            for items in by_conn.values():  # each connection in order, all of it
                client = int(items[0][1].split(b":")[0])
                assert items == [(i, payload(client, i)) for i in range(per_client)]
            assert all(t.failure is None for t in threads)
        finally:
            done.set()
            await source.stop()

    run(main(), loop_kind)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_connection_accepted_while_paused_reads_at_most_once(
    loop_kind: str, probe: Probe
) -> None:
    async def main() -> None:
        source = TcpFrameSource("127.0.0.1", 0, HEADER, be32, max_buffered_bytes=1000)
        await source.start()
        go, done = threading.Event(), threading.Event()
        try:
            _, first = await asyncio.open_connection(*source.address)
            first.write(framed(b"f" * 1000))
            await poll(lambda: source._paused, what="the byte bound")
            (first_conn,) = source._conns
            late = Client(source.address, memoryview(framed(b"l" * 1000) * 4000),
                          memoryview(b""), go, done)  # 4 MB, far more than one read
            late.start()
            await poll(lambda: len(source._conns) == 2, what="the late connection")
            (late_conn,) = source._conns - {first_conn}
            # asyncio never reads it; uvloop reads once before the pause takes. Nothing more
            # may come, however long one waits: give it a generous chance to.
            await asyncio.sleep(0.3)
            assert probe.reads_by.get(late_conn, 0) <= 1
            assert source.buffered_bytes <= 1000 + READ
            frames = await source.read(1000, 1.0)
            source.ack(f.offset for f in frames)
            assert not source._paused
            rest = await read_acking(source, 4001 - len(frames))
            assert sorted({f.payload for f in frames + rest}) == [b"f" * 1000, b"l" * 1000]
            assert late.failure is None
        finally:
            done.set()
            go.set()
            await source.stop()

    run(main(), loop_kind)


def test_nacked_frames_stay_counted_and_reading_resumes_at_three_quarters() -> None:
    async def main() -> None:
        source = TcpFrameSource("127.0.0.1", 0, HEADER, be32, max_buffered_bytes=10_000)
        await source.start()
        try:
            _, writer = await asyncio.open_connection(*source.address)
            writer.write(b"".join(framed(b"%d" % i * 1000) for i in range(10)))
            await poll(lambda: source.pending() == 10, what="10 frames")
            assert source._paused and source.buffered_bytes == 10_000
            writer.write(framed(b"late"))  # not read while paused
            frames = await source.read(10, 1.0)
            assert len(frames) == 10 and source.buffered_bytes == 10_000
            source.nack(f.offset for f in frames[8:])
            assert source.buffered_bytes == 10_000 and source._paused
            source.ack(f.offset for f in frames[:2])
            assert source.buffered_bytes == 8_000 and source._paused  # above 7 500
            again = await source.read(10, 0.3)
            assert again == frames[8:]  # the nacked ones, and not b"late"
            source.ack([frames[2].offset, frames[2].offset])  # repeated acks count once
            assert source.buffered_bytes == 7_000 and not source._paused
            late = await read_acking(source, 1)
            assert [f.payload for f in late] == [b"late"]
            assert conn_seq(late[0])[1] == 10
            source.ack(f.offset for f in frames)
            assert source.buffered_bytes == 0
            writer.close()
        finally:
            await source.stop()

    run(main())


# ------------------------------------------------------------------------------------ max_frame


def test_max_frame_from_settings_rejects_a_bigger_frame_on_that_connection_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings.from_env({"NFBUILDER_MAX_FRAME": "100"})

    async def main() -> int:
        source = TcpFrameSource(
            "127.0.0.1", 0, HEADER, be32,
            max_frame=settings.max_frame,
            max_buffered_bytes=settings.source_buffer_bytes,
            max_partial_bytes=settings.source_partial_bytes,
        )
        await source.start()
        try:
            bad_reader, bad = await asyncio.open_connection(*source.address)
            good_reader, good = await asyncio.open_connection(*source.address)
            bad_port = bad.get_extra_info("sockname")[1]
            good.write(framed(b"g" * 100))
            bad.write(framed(b"a" * 100) + framed(b"a" * 101))
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(bad_reader.read(), 10.0) == b""
            good.write(framed(b"h" * 100))
            frames = await read_acking(source, 3)
            assert sorted(f.payload for f in frames) == [b"a" * 100, b"g" * 100, b"h" * 100]
            assert not good_reader.at_eof()
            assert source.partial_bytes == 0
            good.close()
            return int(bad_port)
        finally:
            await source.stop()

    caplog.set_level(logging.INFO, logger="nfbuilder.runtime.tcp")
    bad_port = run(main())
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith("TCP source: closing connection ")
    assert warnings[0].endswith(
        f" from 127.0.0.1:{bad_port} after 1 good frames: payload_length returned 101 for header "
        "00000065 (hex), outside the allowed 0..100 bytes (max_frame); the stream is not framed "
        "as the decoder expects, or this application's frames are larger than max_frame: raise "
        "it with the environment variable NFBUILDER_MAX_FRAME (bytes)"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_buffered_bytes": 0}, "max_buffered_bytes must be an int >= 1, got 0"),
        ({"max_partial_bytes": True}, "max_partial_bytes must be an int >= 1, got True"),
        ({"max_partial_bytes": 1.5}, "max_partial_bytes must be an int >= 1, got 1.5"),
        ({"max_frame": -1}, "max_frame must be an int >= 0, got -1"),
    ],
)
def test_source_rejects_bad_bounds(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        TcpFrameSource("127.0.0.1", 0, HEADER, be32, **kwargs)
    assert str(info.value) == message


# ------------------------------------------------------------------------------------- settings


def test_settings_bounds_default_to_the_source_defaults() -> None:
    s = Settings.from_env({})
    assert (s.max_frame, s.source_buffer_bytes, s.source_partial_bytes) == (
        DEFAULT_MAX_FRAME, DEFAULT_MAX_BUFFERED_BYTES, DEFAULT_MAX_PARTIAL_BYTES
    )
    defaults = (DEFAULT_MAX_FRAME, DEFAULT_MAX_BUFFERED_BYTES, DEFAULT_MAX_PARTIAL_BYTES)
    assert defaults == (16 * MiB, 64 * MiB, 64 * MiB)
    source = TcpFrameSource("127.0.0.1", 0, HEADER, be32)
    assert (source._max_frame, source._max_buffered_bytes, source._max_partial_bytes) == (
        s.max_frame, s.source_buffer_bytes, s.source_partial_bytes
    )


def test_settings_read_the_bounds() -> None:
    s = Settings.from_env({
        "NFBUILDER_MAX_FRAME": "1048576",
        "NFBUILDER_SOURCE_BUFFER_BYTES": " 33554432 ",
        "NFBUILDER_SOURCE_PARTIAL_BYTES": "1",
        "NFBUILDER_MAP_WORKERS": "2",
    })
    assert (s.max_frame, s.source_buffer_bytes, s.source_partial_bytes) == (MiB, 32 * MiB, 1)
    assert s.map_workers == 2
    blank = Settings.from_env({"NFBUILDER_MAX_FRAME": "", "NFBUILDER_SOURCE_BUFFER_BYTES": " "})
    assert (blank.max_frame, blank.source_buffer_bytes) == (16 * MiB, 64 * MiB)


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("NFBUILDER_MAX_FRAME", "16M",
         "environment variable NFBUILDER_MAX_FRAME must be an integer, got '16M'; "
         "unset it to use the default (16777216)"),
        ("NFBUILDER_MAX_FRAME", "0",
         "environment variable NFBUILDER_MAX_FRAME must be >= 1, got 0; "
         "unset it to use the default (16777216)"),
        ("NFBUILDER_SOURCE_BUFFER_BYTES", "0",
         "environment variable NFBUILDER_SOURCE_BUFFER_BYTES must be >= 1, got 0; "
         "unset it to use the default (67108864)"),
        ("NFBUILDER_SOURCE_BUFFER_BYTES", "1.5e6",
         "environment variable NFBUILDER_SOURCE_BUFFER_BYTES must be an integer, got '1.5e6'; "
         "unset it to use the default (67108864)"),
        ("NFBUILDER_SOURCE_PARTIAL_BYTES", "-5",
         "environment variable NFBUILDER_SOURCE_PARTIAL_BYTES must be >= 1, got -5; "
         "unset it to use the default (67108864)"),
    ],
)
def test_settings_reject_bad_bounds_naming_the_variable(name: str, raw: str,
                                                        message: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({name: raw})
    assert str(info.value) == message
