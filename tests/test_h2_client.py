"""The lean h2 client transport (nfbuilder.local.h2client) against this repo's grpcio servers.

Every client kind runs on both channels, ``grpc`` (grpcio's, the reference) and ``h2``, with the
same expectations; where the reference's exact text matters (user-code errors, protocol
violations), one test drives both and compares what they raise. HTTP/2 situations a grpcio
server does not produce on demand (a PING, a GOAWAY in the same read as another stream's
trailers, a one-kilobyte window) come from a raw h2 server written here.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import hyperframe.frame
import pytest
from google.protobuf import empty_pb2
from protocol_harness import ServerProcess, wait_for

from nfbuilder._proto import (
    map_pb2,
    map_pb2_grpc,
    sink_pb2_grpc,
    source_pb2_grpc,
    sourcetransform_pb2_grpc,
)
from nfbuilder.local.clients import (
    Channel,
    ConnectTimeout,
    MapClient,
    Partitions,
    Result,
    SinkClient,
    SinkDatum,
    SourceClient,
    TransformClient,
    TransformResult,
    UdfStreamError,
    connect,
    wait_ready,
)
from nfbuilder.local.h2client import H2Channel
from nfbuilder.runtime.grpcwire import frame_message, response_headers, status_trailers

T = TypeVar("T")
TRANSPORTS = ("grpc", "h2")
NS = 1_000_000_000
STUBS = {"map": map_pb2_grpc.MapStub, "sink": sink_pb2_grpc.SinkStub,
         "source": source_pb2_grpc.SourceStub,
         "sourcetransformer": sourcetransform_pb2_grpc.SourceTransformStub}


def run(coro: Awaitable[T], timeout_s: float = 60) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout_s))  # type: ignore[arg-type]


@contextlib.contextmanager
def servers(tmp_path: Path, kind: str, *args: str, env: dict[str, str] | None = None
            ) -> Iterator[dict[str, ServerProcess]]:
    """One grpcio server of ``kind`` per transport, started together (tests/protocol_server)."""
    procs = {}
    try:
        for transport in TRANSPORTS:
            (tmp_path / transport).mkdir()
            procs[transport] = ServerProcess(tmp_path / transport, kind, *args, env={
                "NFBUILDER_TRANSPORT": "grpc", **(env or {})})
        for proc in procs.values():
            proc.wait_ready()
        yield procs
    finally:
        for proc in procs.values():
            proc.close()


async def dial(server: ServerProcess, transport: str) -> Channel:
    """numa's order after the server-info file: connect, then IsReady until it succeeds."""
    channel = await connect(server.socket_path, retry_s=0.05, deadline_s=20, transport=transport)
    await wait_ready(STUBS[server.kind](channel), retry_s=0.05, deadline_s=20)
    return channel


def per_transport(tmp_path: Path, kind: str, scenario: Any, *args: str,
                  env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``scenario(server, transport)`` on each transport, each with its own server; returns
    what each scenario returned."""
    async def both(procs: dict[str, ServerProcess]) -> dict[str, Any]:
        outs = await asyncio.gather(*(scenario(procs[t], t) for t in TRANSPORTS))
        return dict(zip(TRANSPORTS, outs, strict=True))

    with servers(tmp_path, kind, *args, env=env) as procs:
        return run(both(procs))


def error_facts(exc: BaseException) -> tuple[Any, ...]:
    """What a caller can see of a client error, comparable across transports."""
    if isinstance(exc, UdfStreamError):
        return (type(exc), exc.code, exc.message, exc.container, exc.debug_info, str(exc))
    return (type(exc), str(exc))


# ---------------------------------------------------------------- map


def test_map_500_in_flight_matched_by_id_on_both_transports(tmp_path: Path) -> None:
    """Handshake, then 500 requests at once on one MapFn stream; a slow one is answered last
    (4 workers) and still reaches its own caller; every field round-trips."""
    async def scenario(server: ServerProcess, transport: str) -> list[list[Result]]:
        channel = await dial(server, transport)
        client = await MapClient.open(channel, max_in_flight=500)
        finished: list[int] = []

        async def one(i: int) -> list[Result]:
            value = b"slow" if i == 0 else b"v%d" % i
            results = await client.map(f"v-{i}-0", (f"k{i}",), value, event_time_ns=i * NS,
                                       watermark_ns=7, headers={"h": "x"},
                                       user_metadata={"g": {"i": b"%d" % i}})
            finished.append(i)
            return results

        outs = await asyncio.gather(*(one(i) for i in range(500)))
        assert finished[-1] == 0, "the slow request should have been answered last"
        for i, results in enumerate(outs):
            assert results == [Result(
                b"slow" if i == 0 else b"v%d" % i, (f"k{i}",), ("echo",),
                {"g": {"i": b"%d" % i},
                 "seen": {"wm": b"7", "et": str(i * NS).encode(), "hdr": b"x"}})]
        assert await client.map("two", (), b"two", 0) == [
            Result(b"a", tags=("t1",)), Result(b"b", keys=("k2",))]
        assert await client.map("none", (), b"none", 0) == []
        await client.close()
        await channel.close()
        return outs

    outs = per_transport(tmp_path, "map", scenario, env={"NFBUILDER_MAP_WORKERS": "4"})
    assert outs["h2"] == outs["grpc"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_messages_larger_than_a_frame_and_than_the_windows(tmp_path: Path, transport: str) -> None:
    """20 KB (> one 16 KiB frame), 100 KB (> the 64 KiB spec window) and 5 MiB (> the
    client's 2 MiB and the grpcio server's 4 MiB stream windows) each way, among small ones."""
    sizes = [20_000, 100_000, 5 * 2**20]

    async def scenario(server: ServerProcess) -> None:
        channel = await dial(server, transport)
        client = await MapClient.open(channel, max_in_flight=50)
        values = [bytes([65 + i]) * size for i, size in enumerate(sizes)]
        values += [b"small%d" % i for i in range(20)]
        outs = await asyncio.gather(*(client.map(f"id{i}", (), v, 0)
                                      for i, v in enumerate(values)))
        assert [o[0].value for o in outs] == values
        await client.close()
        await channel.close()

    (tmp_path / "s").mkdir()
    with ServerProcess(tmp_path / "s", "map") as server:
        run(scenario(server))


@pytest.mark.parametrize(("value", "message"), [
    (b"fail", "UDF_EXECUTION_ERROR(udf): ValueError('boom')"),
    (b"usererr", "UDF_EXECUTION_ERROR(udf): step 'double' (app.py:7, double()) raised "
                 "KeyError('k')"),
])
def test_user_code_error_is_the_same_client_error_on_both_transports(
        tmp_path: Path, value: bytes, message: str) -> None:
    async def scenario(server: ServerProcess, transport: str) -> tuple[Any, ...]:
        channel = await dial(server, transport)
        client = await MapClient.open(channel)
        before = asyncio.ensure_future(client.map("before", (), b"ok", 0))
        failing = asyncio.ensure_future(client.map("bad", (), value, 0))
        after = asyncio.ensure_future(client.map("after", (), b"ok", 0))
        assert (await before)[0].value == b"ok"
        with pytest.raises(UdfStreamError) as err:
            await failing
        with pytest.raises(UdfStreamError) as pending:  # pending calls fail with it
            await after
        assert pending.value is err.value
        with pytest.raises(UdfStreamError):  # later calls fail at once
            await client.map("later", (), b"x", 0)
        await client.close()
        await channel.close()
        return error_facts(err.value)

    facts = per_transport(tmp_path, "map", scenario)
    assert facts["h2"] == facts["grpc"]
    _, code, got_message, container, debug_info, _ = facts["h2"]
    assert (code, got_message, container) == (grpc.StatusCode.INTERNAL, message, "udf")
    assert "Traceback" in debug_info


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_server_killed_mid_stream_fails_pending_calls(tmp_path: Path, transport: str) -> None:
    async def scenario(server: ServerProcess) -> None:
        channel = await dial(server, transport)
        client = await MapClient.open(channel)
        slow = asyncio.ensure_future(client.map("slow", (), b"slow", 0))
        await asyncio.to_thread(wait_for, lambda: (server.marks / "slow-started").exists(),
                                "the slow handler")
        server.terminate(signal.SIGKILL)
        with pytest.raises(UdfStreamError) as err:
            await slow
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(UdfStreamError) as later:
            await client.map("later", (), b"x", 0)
        assert later.value is err.value
        await client.close()
        await channel.close()

    (tmp_path / "s").mkdir()
    with ServerProcess(tmp_path / "s", "map") as server:
        run(scenario(server))


def test_server_stop_goaway_fails_calls_in_flight_at_once(tmp_path: Path) -> None:
    """SIGTERM: the grpcio server sends GOAWAY and serves its streams for its grace period (2 s
    here). h2 cannot go on after a GOAWAY, so the h2 channel fails every call in flight at once
    with UNAVAILABLE, a ClientError: the engine restarts the replica. (grpc.aio would let the
    slow call finish within the grace.) The handler runs in a worker thread, so the server
    sends its GOAWAY while the slow call is still being handled."""
    async def scenario(server: ServerProcess) -> None:
        channel = await dial(server, "h2")
        client = await MapClient.open(channel)
        slow = asyncio.ensure_future(client.map("slow", (), b"slow", 0))
        await asyncio.to_thread(wait_for, lambda: (server.marks / "slow-started").exists(),
                                "the slow handler")
        server.terminate(signal.SIGTERM)
        with pytest.raises(UdfStreamError) as err:
            await asyncio.wait_for(slow, 1.5)  # well before the 2 s grace is over
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert err.value.message.startswith("the server sent GOAWAY (NO_ERROR")
        assert isinstance(channel, H2Channel) and channel.closed
        with pytest.raises(grpc.aio.AioRpcError) as unary:  # no new call on a closed channel
            await map_pb2_grpc.MapStub(channel).IsReady(empty_pb2.Empty())
        assert unary.value.code() == grpc.StatusCode.UNAVAILABLE
        await client.close()
        await channel.close()

    (tmp_path / "s").mkdir()
    with ServerProcess(tmp_path / "s", "map", env={"NFBUILDER_MAP_WORKERS": "2"}) as server:
        run(scenario(server))
        assert server.wait_exit()[0] == 0


# ---------------------------------------------------------------- transformer, source, sink


def test_transformer_semantics_are_the_same_on_both_transports(tmp_path: Path) -> None:
    async def scenario(server: ServerProcess, transport: str) -> list[Any]:
        channel = await dial(server, transport)
        client = await TransformClient.open(channel)
        t = 1_700_000_000 * NS + 123_456_789
        outs: list[Any] = list(await asyncio.gather(*(
            client.transform(f"b2Zm{i}-0", ("k",), b"v%d" % i, event_time_ns=t)
            for i in range(50))))
        outs.append(await client.transform("eA==-0", (), b"et", event_time_ns=t))
        outs.append(await client.transform("eQ==-0", (), b"none", event_time_ns=t))
        await client.close()
        await channel.close()
        return outs

    outs = per_transport(tmp_path, "sourcetransformer", scenario)
    assert outs["h2"] == outs["grpc"]
    t = 1_700_000_000 * NS + 123_456_789
    assert outs["h2"][0] == [TransformResult(
        b"v0", t, ("k",), ("echo",), {"seen": {"wm": b"None", "et": str(t).encode(),
                                               "hdr": b""}})]
    assert outs["h2"][50] == [TransformResult(b"et", 1_700_000_000_123_456_789)]
    assert outs["h2"][51][0].tags == ("U+005C__DROP__",)  # an empty list becomes a DROP


def test_source_semantics_are_the_same_on_both_transports(tmp_path: Path) -> None:
    async def scenario(server: ServerProcess, transport: str) -> list[Any]:
        channel = await dial(server, transport)
        client = await SourceClient.open(channel, supports_nack=True)
        log: list[Any] = [await client.read(4, timeout_ms=100)]
        log.append(await asyncio.gather(
            client.pending(), client.partitions(),
            client.ack([(r.offset, r.partition_id) for r in log[0]])))
        log.append(await client.read(3, timeout_ms=100))
        log.append(await client.nack([(b"4", 0)]))
        log.append(await client.read(100, timeout_ms=100))
        log.append(await client.read(5, timeout_ms=50))
        log.append(await client.pending())
        await client.close()
        await channel.close()
        return log

    logs = per_transport(tmp_path, "source", scenario)
    assert logs["h2"] == logs["grpc"]
    log = logs["h2"]
    assert [r.payload for r in log[0]] == [b"m0", b"m1", b"m2", b"m3"]
    first = log[0][0]
    assert (first.offset, first.partition_id, first.event_time_ns, first.keys, first.headers,
            first.user_metadata) == (b"0", 0, 0, ("k",), {"h": "v"}, {"g": {"i": b"0"}})
    assert log[1] == [6, Partitions(partitions=(0,), total=1), None]
    assert [r.payload for r in log[4]] == [b"m4", b"m7", b"m8", b"m9"]
    assert log[3] is True and log[5] == [] and log[6] == 0


def test_source_error_is_the_same_client_error_on_both_transports(tmp_path: Path) -> None:
    """The source returns an empty offset: our server refuses it (a user-code error)."""
    async def scenario(server: ServerProcess, transport: str) -> tuple[Any, ...]:
        channel = await dial(server, transport)
        client = await SourceClient.open(channel)
        with pytest.raises(UdfStreamError) as err:
            await client.read(3, timeout_ms=100)
        await client.close()
        await channel.close()
        return error_facts(err.value)

    facts = per_transport(tmp_path, "source", scenario, "--bad-offset", "1")
    assert facts["h2"] == facts["grpc"]
    assert facts["h2"][2].startswith(
        "UDF_EXECUTION_ERROR(udsource): ValueError(\"source handler returned a message with an "
        "empty offset (payload b'm1')")


def test_sink_semantics_are_the_same_on_both_transports(tmp_path: Path) -> None:
    async def scenario(server: ServerProcess, transport: str) -> list[Any]:
        channel = await dial(server, transport)
        client = await SinkClient.open(channel)
        batch = [SinkDatum(id=f"out-{i}-0", value=b"bad%d" % i if i % 3 == 0 else b"ok%d" % i,
                           keys=("k",), event_time_ns=i * NS, watermark_ns=0,
                           headers={"h": "v"}, user_metadata={"g": {"k": b"v"}})
                 for i in range(300)]
        log: list[Any] = [await client.write(batch)]
        log.append(await client.write([SinkDatum(id="big", value=b"x" * 200_000)]))
        await client.close()
        client = await SinkClient.open(channel)  # a second stream on the same channel
        log.append(await client.write([SinkDatum(id="again", value=b"ok-again")]))
        with pytest.raises(UdfStreamError) as raised:  # the user-code error contract
            await client.write([SinkDatum(id="r", value=b"raise")])
        log.append(error_facts(raised.value))
        await client.close()
        await channel.close()
        log.append(sorted((server.marks / "sunk").read_bytes().split()))
        return log

    logs = per_transport(tmp_path, "sink", scenario)
    assert logs["h2"] == logs["grpc"]
    outcome = logs["h2"][0]
    assert outcome["out-0-0"] == (False, "rejected b'bad0'") and outcome["out-1-0"] == (True, "")
    assert logs["h2"][1] == {"big": (True, "")} and logs["h2"][2] == {"again": (True, "")}
    assert logs["h2"][3][2].startswith("UDF_EXECUTION_ERROR(udsink): UDSinkError, OSError(")
    assert len(logs["h2"][4]) == 200 + 1 + 1


# ---------------------------------------------------------------- deadlines, connecting


class HangingReady(map_pb2_grpc.MapServicer):
    async def IsReady(self, request: Any, context: Any) -> Any:
        await asyncio.Event().wait()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unary_deadline(tmp_path: Path, transport: str) -> None:
    async def scenario() -> None:
        server = grpc.aio.server()
        map_pb2_grpc.add_MapServicer_to_server(HangingReady(), server)
        sock = tmp_path / "hang.sock"
        server.add_insecure_port(f"unix://{sock}")
        await server.start()
        channel = await connect(sock, retry_s=0.05, deadline_s=10, transport=transport)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await map_pb2_grpc.MapStub(channel).IsReady(empty_pb2.Empty(), timeout=0.2)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            with pytest.raises(ConnectTimeout, match=r"IsReady did not succeed within 0.3 s "
                                                     r"\(last error DEADLINE_EXCEEDED: "):
                await wait_ready(map_pb2_grpc.MapStub(channel), retry_s=0.05, deadline_s=0.3)
        finally:
            await channel.close()
            await server.stop(None)

    run(scenario())


def test_connect_deadline_and_transport_names(tmp_path: Path) -> None:
    sock = tmp_path / "nobody.sock"
    with pytest.raises(ConnectTimeout) as err:
        run(connect(sock, retry_s=0.05, deadline_s=0.2, transport="h2"))
    assert str(err.value) == (
        f"could not connect to the UDF socket {sock} within 0.2 s (retrying every 0.05 s); check "
        "that the vertex process is running and binds that path")
    with pytest.raises(ValueError, match="unknown transport 'h3'; expected one of h2, grpc"):
        run(connect(sock, transport="h3"))


def test_message_size_limits_both_ways(tmp_path: Path) -> None:
    async def scenario(server: ServerProcess) -> None:
        channel = await H2Channel.connect(str(server.socket_path), max_message_bytes=200)
        big = map_pb2_grpc.MapStub(channel)
        call = big.MapFn()
        with pytest.raises(grpc.aio.AioRpcError) as sent:
            await call.write(map_pb2.MapRequest(id="x" * 300))
        assert sent.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert sent.value.details().startswith("Sent message larger than max (30")
        client = await MapClient.open(channel)
        with pytest.raises(UdfStreamError) as received:  # the echo comes back with metadata
            await client.map("m", ("k",), b"v" * 160, 0)
        assert received.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "over the limit of 200 bytes" in received.value.message
        await channel.close()

    (tmp_path / "s").mkdir()
    with ServerProcess(tmp_path / "s", "map") as server:
        run(scenario(server))


# ---------------------------------------------------------------- raw HTTP/2 situations


class RawServer(asyncio.Protocol):
    """An HTTP/2 server made with h2 directly: the test decides every frame it sends."""

    def __init__(self, settings: dict[h2.settings.SettingCodes, int]) -> None:
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.settings = settings
        self.transport: asyncio.Transport | None = None
        self.bodies: dict[int, bytearray] = {}
        self.data_frames = 0
        self.requests: asyncio.Queue[int] = asyncio.Queue()  # stream ids whose request ended
        self.ping_acked = asyncio.Event()
        self.poured: dict[int, bytearray] = {}  # bytes still to send, per stream

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        # in the first SETTINGS, so the client knows them before it opens a stream
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values=self.settings)
        self.h2.initiate_connection()
        self.flush()

    def data_received(self, data: bytes) -> None:
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                self.bodies[event.stream_id or 0] = bytearray()
            elif isinstance(event, h2.events.DataReceived):
                self.data_frames += 1
                self.bodies[event.stream_id or 0] += event.data or b""
                self.h2.acknowledge_received_data(event.flow_controlled_length or 0,
                                                  event.stream_id or 0)
            elif isinstance(event, h2.events.StreamEnded):
                self.requests.put_nowait(event.stream_id or 0)
            elif isinstance(event, h2.events.PingAckReceived):
                self.ping_acked.set()
        self.flush()

    def flush(self) -> None:
        assert self.transport is not None
        self._pour_more()
        self.transport.write(self.h2.data_to_send())

    def pour(self, stream_id: int, body: bytes) -> None:
        """Send ``body`` on ``stream_id`` as fast as the client's windows allow."""
        self.h2.send_headers(stream_id, response_headers())
        self.poured[stream_id] = bytearray(body)
        self.flush()

    def _pour_more(self) -> None:
        for stream_id, rest in self.poured.items():
            while rest:
                room = min(self.h2.local_flow_control_window(stream_id), 16384, len(rest))
                if room <= 0:
                    break
                self.h2.send_data(stream_id, bytes(rest[:room]))
                del rest[:room]

    def answer(self, stream_id: int, body: bytes) -> None:
        self.h2.send_headers(stream_id, response_headers())
        for start in range(0, len(body), 16384):
            self.h2.send_data(stream_id, body[start:start + 16384])
        self.h2.send_headers(stream_id, status_trailers(0), end_stream=True)


@contextlib.asynccontextmanager
async def raw_server(tmp_path: Path, settings: dict[h2.settings.SettingCodes, int] | None = None
                     ) -> AsyncIterator[tuple[H2Channel, list[RawServer]]]:
    made: list[RawServer] = []

    def factory() -> RawServer:
        made.append(RawServer(settings or {}))
        return made[-1]

    sock = str(tmp_path / "raw.sock")
    server = await asyncio.get_running_loop().create_unix_server(factory, sock)
    channel = await H2Channel.connect(sock)
    try:
        yield channel, made
    finally:
        await channel.close()
        server.close()


def test_ping_from_the_server_is_answered(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with raw_server(tmp_path) as (_, made):
            made[0].h2.ping(b"nfb-ping")
            made[0].flush()
            await asyncio.wait_for(made[0].ping_acked.wait(), 5)

    run(scenario())


def test_small_send_window_waits_for_window_updates(tmp_path: Path) -> None:
    """A 1 KB stream window: a 300 KB request goes out in window-sized pieces as the server
    hands the window back, and arrives whole; the echo comes back whole too."""
    async def scenario() -> None:
        async with raw_server(tmp_path, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000}
                              ) as (channel, made):
            echo = channel.unary_unary("/test.Raw/Echo")
            body = bytes(range(256)) * 1200
            answer = asyncio.ensure_future(echo(body))
            stream_id = await made[0].requests.get()
            assert bytes(made[0].bodies[stream_id]) == frame_message(body)
            assert made[0].data_frames >= len(body) // 1000
            made[0].answer(stream_id, frame_message(body))
            made[0].flush()
            assert await answer == body

    run(scenario())


def test_a_reader_that_falls_behind_stops_the_server_by_flow_control(tmp_path: Path) -> None:
    """The client reads nothing: the server can send no more than what is handed back before
    the unread backlog reaches ACK_BELOW plus one stream window; reading lets the rest come."""
    from nfbuilder.local.h2client import ACK_BELOW, STREAM_WINDOW

    async def scenario() -> None:
        async with raw_server(tmp_path) as (channel, made):
            call = channel.stream_stream("/test.Raw/Pour")()
            await call.write(b"go")
            server = made[0]
            stream_id = await asyncio.wait_for(_first_body(server), 5)
            messages = [bytes([i]) * 100_000 for i in range(40)]
            server.pour(stream_id, b"".join(frame_message(m) for m in messages))
            while server.h2.local_flow_control_window(stream_id) > 0:  # noqa: ASYNC110
                await asyncio.sleep(0.01)  # polls the server's view of the window
            sent = 40 * 100_005 - len(server.poured[stream_id])
            assert ACK_BELOW <= sent <= ACK_BELOW + STREAM_WINDOW + 100_005
            assert [await call.read() for _ in range(40)] == messages

    run(scenario())


async def _first_body(server: RawServer) -> int:
    while not any(server.bodies.values()):  # noqa: ASYNC110 - polls the server's state
        await asyncio.sleep(0.01)
    return next(sid for sid, body in server.bodies.items() if body)


def test_goaway_read_with_other_trailers_keeps_them_and_fails_the_rest(tmp_path: Path) -> None:
    """One socket read brings call A's error trailers, a GOAWAY and a PING: A gets its own
    status, B (still in flight) fails with UNAVAILABLE naming the GOAWAY."""
    async def scenario() -> None:
        async with raw_server(tmp_path) as (channel, made):
            raw = channel.unary_unary("/test.Raw/Call")
            first = asyncio.ensure_future(raw(b"a"))
            a = await made[0].requests.get()
            second = asyncio.ensure_future(raw(b"b"))
            await made[0].requests.get()
            server = made[0]
            server.h2.send_headers(a, status_trailers(13, "boom in A", headers_sent=False),
                                   end_stream=True)
            server.h2.close_connection(additional_data=b"going away")
            ping = hyperframe.frame.PingFrame(0, opaque_data=b"late-one").serialize()
            assert server.transport is not None
            server.transport.write(server.h2.data_to_send() + ping)
            with pytest.raises(grpc.aio.AioRpcError) as err_a:
                await first
            assert (err_a.value.code(), err_a.value.details()) == (
                grpc.StatusCode.INTERNAL, "boom in A")
            with pytest.raises(grpc.aio.AioRpcError) as err_b:
                await second
            assert err_b.value.code() == grpc.StatusCode.UNAVAILABLE
            assert err_b.value.details().startswith(
                "the server sent GOAWAY (NO_ERROR: going away), last stream")

    run(scenario())


def test_a_read_is_cut_right_after_a_goaway_however_the_bytes_arrive() -> None:
    """The GOAWAY may come with other frames and be cut anywhere, header included."""
    from nfbuilder.local.h2client import _FrameBounds

    before = (hyperframe.frame.SettingsFrame(0).serialize()
              + hyperframe.frame.DataFrame(1, data=b"d" * 40_000).serialize()
              + hyperframe.frame.HeadersFrame(1, data=b"\x88").serialize())
    goaway = hyperframe.frame.GoAwayFrame(0, last_stream_id=1, additional_data=b"bye")
    wire = before + goaway.serialize() + hyperframe.frame.PingFrame(0).serialize()
    goaway_end = len(before) + len(goaway.serialize())
    for piece in (1, 5, 9, 10, 17, 1000, 16_384, len(wire)):
        bounds, given = _FrameBounds(), 0
        for start in range(0, len(wire), piece):
            chunk = wire[start:start + piece]
            end = bounds.cut(chunk)
            given += end
            if end < len(chunk) or start + len(chunk) >= goaway_end:
                break
        assert given == goaway_end, piece


def test_server_reset_and_closed_socket(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with raw_server(tmp_path) as (channel, made):
            raw = channel.unary_unary("/test.Raw/Call")
            first = asyncio.ensure_future(raw(b"a"))
            made[0].h2.reset_stream(await made[0].requests.get(), h2.errors.ErrorCodes.CANCEL)
            made[0].flush()
            with pytest.raises(grpc.aio.AioRpcError) as reset:
                await first
            assert (reset.value.code(), reset.value.details()) == (
                grpc.StatusCode.CANCELLED, "the server reset the stream (RST_STREAM CANCEL)")
            second = asyncio.ensure_future(raw(b"b"))
            await made[0].requests.get()
            assert made[0].transport is not None
            made[0].transport.close()
            with pytest.raises(grpc.aio.AioRpcError) as lost:
                await second
            assert (lost.value.code(), lost.value.details()) == (
                grpc.StatusCode.UNAVAILABLE, "the server closed the connection")

    run(scenario())


# ---------------------------------------------------------------- the engine on h2


def test_reverse_on_the_engine_with_h2_clients_delivers_what_grpc_delivers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """NFBUILDER_TRANSPORT=h2 for the engine process only; its vertex processes are pinned to
    grpcio servers."""
    from engine_harness import run_app_on_engine

    from apps.data import frame
    from nfbuilder.local.engine import Engine

    own_env = Engine._env
    monkeypatch.setattr(Engine, "_env", lambda self, v, c=None: {
        **own_env(self, v, c), "NFBUILDER_TRANSPORT": "grpc"})
    inputs = [[frame(f"w{i:04d}".encode()) for i in range(500)]]
    channels: list[str] = []

    async def note_channel(engine: Engine, rx: Any) -> None:
        channels.extend(type(r.channel).__name__ for reps in engine.replicas.values()
                        for r in reps)

    outputs = {}
    for transport in TRANSPORTS:
        monkeypatch.setenv("NFBUILDER_TRANSPORT", transport)
        out, _, engine = run(run_app_on_engine(
            "reverse", inputs, work_dir=str(tmp_path / transport), state_store="memory://",
            during=note_channel), timeout_s=120)
        assert engine.failure is None
        assert all(r.restarts == 0 for reps in engine.replicas.values() for r in reps)
        outputs[transport] = out
    assert outputs["h2"] == outputs["grpc"]
    assert outputs["h2"].decode().split("\n")[:-1] == [f"w{i:04d}"[::-1] for i in range(500)]
    assert set(channels[:len(channels) // 2]) == {"Channel"}
    assert set(channels[len(channels) // 2:]) == {"H2Channel"}

