"""Conformance of the lean h2 transport (NFBUILDER_TRANSPORT=h2), next to grpcio's.

Real servers (tests/protocol_server.py subprocesses) on real Unix sockets, driven by three
independent HTTP/2 clients: our numa-like clients (grpc.aio, C-core), pynumaflow 0.14's
generated stubs (grpcio, C-core, in a subprocess) and Node.js's built-in ``http2`` (nghttp2,
tests/node/grpc_h2_client.js, fed protobuf bytes built here). Where both transports must behave
alike, a test runs on each (``transport`` is "grpc" or "h2").
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import h2.config
import h2.connection
import pytest
from google.protobuf import empty_pb2
from google.rpc import error_details_pb2, status_pb2
from protocol_harness import ROOT, ServerProcess, wait_for

from nfbuilder._proto import map_pb2, map_pb2_grpc, sink_pb2, source_pb2
from nfbuilder.local.clients import MapClient, SinkClient, SinkDatum, SourceClient, TransformClient
from nfbuilder.runtime.grpcwire import MessageReader, frame_message, request_headers
from nfbuilder.runtime.h2server import QUEUE_HIGH_WATER, _Call, _Requests, methods_of
from nfbuilder.runtime.servicers import MapServicer
from nfbuilder.runtime.stream import BidiStream, ErrorContract, StreamSpec

TRANSPORTS = ("grpc", "h2")
NODE = shutil.which("node")
NODE_CLIENT = ROOT / "tests" / "node" / "grpc_h2_client.js"
MAP_FN = "/map.v1.Map/MapFn"
# numa v1.8.3's client: tonic 0.14 Endpoint defaults over hyper 1.x (rust/numaflow-core/src/
# shared/grpc.rs sets no HTTP/2 option): 2 MiB stream window, 5 MiB connection window, 16 KiB
# frames, no keepalive PINGs; 64 MiB max message (create_components.rs).
NUMA_SETTINGS = {"initialWindowSize": 2 * 1024 * 1024, "maxFrameSize": 16 * 1024,
                 "enablePush": False}
NUMA_CONNECTION_WINDOW = 5 * 1024 * 1024

MapReq = map_pb2.MapRequest


def _server(tmp_path: Path, kind: str, transport: str, *args: str,
            env: dict[str, str] | None = None) -> ServerProcess:
    tmp_path.mkdir(parents=True, exist_ok=True)
    return ServerProcess(tmp_path, kind, *args, env={"NFBUILDER_TRANSPORT": transport,
                                                      **(env or {})})


def _b64(message: Any) -> str:
    return base64.b64encode(message.SerializeToString()).decode()


def _handshake() -> str:
    return _b64(MapReq(handshake=map_pb2.Handshake(sot=True)))


def _map(ident: str, value: bytes) -> str:
    return _b64(MapReq(id=ident, request=MapReq.Request(value=value)))


def _replies(call: dict[str, Any]) -> list[map_pb2.MapResponse]:
    return [map_pb2.MapResponse.FromString(base64.b64decode(m)) for m in call["messages"]]


def _node_script(server: ServerProcess, steps: list[dict[str, Any]], *,
                 numa: bool = False) -> str:
    script: dict[str, Any] = {"socket": str(server.socket_path), "steps": steps}
    if numa:
        script.update(settings=NUMA_SETTINGS, connectionWindow=NUMA_CONNECTION_WINDOW)
    return json.dumps(script)


def _node(server: ServerProcess, steps: list[dict[str, Any]], *, numa: bool = False
          ) -> dict[str, Any]:
    """Run the Node client's ``steps`` against ``server``; return what it saw."""
    node = _need_node()
    done = subprocess.run([node, str(NODE_CLIENT)], input=_node_script(server, steps, numa=numa),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _need_node() -> str:
    if NODE is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node (Node.js >= 18) is required under CI for the HTTP/2 tests")
        pytest.skip("node is not installed")
    return NODE


# ---------------------------------------------------------------- the shared core, in process


def test_inline_call_follows_the_stream_choreography() -> None:
    fatal: list[str] = []
    errors = ErrorContract("udf", lambda message, tb: fatal.append(message))
    spec = StreamSpec("MapFn", map_pb2.MapResponse(handshake=map_pb2.Handshake(sot=True)))

    def answer(request: MapReq) -> map_pb2.MapResponse:
        if request.request.value == b"boom":
            raise ValueError("boom")
        return map_pb2.MapResponse(id=request.id)

    stream = BidiStream.one_to_one(spec, answer, errors)
    hello = MapReq(handshake=map_pb2.Handshake(sot=True))
    data = MapReq(id="a", request=MapReq.Request(value=b"x"))

    call, out = stream.inline(), []
    assert call is not None and call.feed([hello, data], out) is None
    assert [r.handshake.sot for r in out] == [True, False] and out[1].id == "a"
    failure = call.feed([hello], out)
    assert failure is not None and failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.message == "MapFn: got a second handshake after the stream was opened"

    call, out = stream.inline(), []
    assert call is not None
    failure = call.feed([data], out)
    assert failure is not None and failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.message.startswith("MapFn: the first request must be a handshake") and not out

    call, out = stream.inline(), []
    assert call is not None
    failure = call.feed([hello, data, MapReq(id="b", request=MapReq.Request(value=b"boom"))], out)
    assert failure is not None and failure.code == grpc.StatusCode.INTERNAL
    assert failure.message == "UDF_EXECUTION_ERROR(udf): ValueError('boom')" == fatal[0]
    assert failure.trailing_metadata()[0][0] == "grpc-status-details-bin"
    assert len(out) == 2  # the answers before the failure still go out


def test_methods_come_from_the_generated_registration() -> None:
    errors = ErrorContract("udf", lambda message, tb: None)
    inline = methods_of(map_pb2_grpc.add_MapServicer_to_server,
                        MapServicer(lambda d: [], errors, workers=1))
    assert sorted(inline) == ["/map.v1.Map/IsReady", MAP_FN]
    assert inline[MAP_FN].inline is not None and inline["/map.v1.Map/IsReady"].unary is not None
    pooled = methods_of(map_pb2_grpc.add_MapServicer_to_server,
                        MapServicer(lambda d: [], errors, workers=3))
    assert pooled[MAP_FN].inline is None and pooled[MAP_FN].stream is not None  # a task per call


def test_task_call_requests_reopen_the_window_as_they_are_read() -> None:
    acks: list[int] = []

    class Connection:  # what _Requests needs of a connection
        def acknowledge(self, stream_id: int, size: int) -> None:
            acks.append(size)

        def flush_soon(self) -> None:
            pass

    requests = _Requests(Connection(), _Call(1, None, 1 << 30))  # type: ignore[arg-type]
    big = QUEUE_HIGH_WATER * 3 // 4
    requests.put(["a"], [big], big)  # under the high-water mark: acknowledged at once
    requests.put(["b"], [big], big)  # over it: held until the handler reads
    assert acks == [big]

    async def read_all() -> list[str]:
        requests.close()
        return [request async for request in requests]

    assert asyncio.run(read_all()) == ["a", "b"] and acks == [big, big]


# ---------------------------------------------------------------- numa-like clients (C-core)


async def _drive_every_kind(servers: dict[str, ServerProcess]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    async with grpc.aio.insecure_channel(f"unix://{servers['map'].socket_path}") as channel:
        mapper = await MapClient.open(channel, max_in_flight=500)
        outs = await asyncio.gather(*(mapper.map(f"v-{i}-0", ("k",), f"m{i}".encode(), 0)
                                      for i in range(500)))
        seen["map"] = sorted(o[0].value for o in outs) == sorted(f"m{i}".encode()
                                                                  for i in range(500))
        await mapper.close()
    path = servers["sourcetransformer"].socket_path
    async with grpc.aio.insecure_channel(f"unix://{path}") as channel:
        transformer = await TransformClient.open(channel)
        seen["transformer"] = [(r.value, r.event_time_ns) for r in
                               await transformer.transform("b2Zm-0", (), b"x", 7_000)]
        await transformer.close()
    async with grpc.aio.insecure_channel(f"unix://{servers['source'].socket_path}") as channel:
        source = await SourceClient.open(channel)
        records = await source.read(3, timeout_ms=50)
        await source.ack([(r.offset, r.partition_id) for r in records])
        seen["source"] = ([r.payload for r in records], await source.nack([(b"5", 0)]),
                          await source.pending(), (await source.partitions()).partitions)
        await source.close()
    async with grpc.aio.insecure_channel(f"unix://{servers['sink'].socket_path}") as channel:
        sink = await SinkClient.open(channel)
        seen["sink"] = await sink.write([SinkDatum("a", b"ok"), SinkDatum("b", b"bad")])
        seen["sink-2"] = await sink.write([SinkDatum("c", b"ok2")])
        await sink.close()
    return seen


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_numa_like_clients_drive_every_servicer(tmp_path: Path, transport: str) -> None:
    kinds = ("map", "sourcetransformer", "source", "sink")
    servers = {kind: _server(tmp_path / kind, kind, transport) for kind in kinds}
    try:
        for server in servers.values():
            server.wait_ready()
        seen = asyncio.run(_drive_every_kind(servers))
    finally:
        for server in servers.values():
            server.close()
    assert seen == {
        "map": True,
        "transformer": [(b"x", 7_000)],
        "source": ([b"m0", b"m1", b"m2"], True, 8, (0,)),
        "sink": {"a": (True, ""), "b": (False, "rejected b'bad'")},
        "sink-2": {"c": (True, "")},
    }


# ---------------------------------------------------------------- pynumaflow's stubs (C-core)


@pytest.mark.parametrize("kind", ["map", "sourcetransformer", "source", "sink"])
def test_pynumaflow_stubs_see_the_same_on_both_transports(tmp_path: Path, kind: str) -> None:
    pytest.importorskip("pynumaflow")
    scenario = "transformer" if kind == "sourcetransformer" else kind
    seen = {}
    for transport in TRANSPORTS:
        with _server(tmp_path / transport, kind, transport, "--count", "10") as server:
            done = subprocess.run(
                [sys.executable, str(ROOT / "tests" / "pynumaflow_client.py"), scenario,
                 str(server.socket_path)],
                capture_output=True, text=True, timeout=60, check=False)
            assert done.returncode == 0, done.stderr
            seen[transport] = json.loads(done.stdout)
    if kind == "map":
        assert seen["h2"]["error"]["details"] == "UDF_EXECUTION_ERROR(udf): ValueError('boom')"
    assert seen["h2"] == seen["grpc"]


# ---------------------------------------------------------------- Node's http2 (nghttp2)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_node_500_in_flight_ping_and_half_close(tmp_path: Path, transport: str) -> None:
    ids = [f"v-{i}-0" for i in range(500)]
    with _server(tmp_path, "map", transport) as server:
        seen = _node(server, [
            {"op": "open", "call": "a", "path": MAP_FN},
            {"op": "send", "call": "a", "messages": [_handshake()]},
            {"op": "recv", "call": "a", "count": 1},
            {"op": "send", "call": "a", "messages": [_map(i, i.encode()) for i in ids]},
            {"op": "recv", "call": "a", "count": 501},
            {"op": "ping"},
            {"op": "end", "call": "a"},
            {"op": "closed", "call": "a"},
        ])
    call = seen["calls"]["a"]
    replies = _replies(call)
    assert replies[0].handshake.sot and not replies[0].id
    assert [r.id for r in replies[1:]] == ids  # inline: in arrival order
    assert all(r.results[0].value == r.id.encode() for r in replies[1:])
    assert call["headers"][":status"] == "200"
    assert call["headers"]["content-type"] == "application/grpc"
    assert call["trailers"]["grpc-status"] == "0" and seen["pings"] == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_node_large_messages_with_numa_windows(tmp_path: Path, transport: str) -> None:
    # bigger than a 16 KiB frame, than the 64 KiB default window, than numa's 2 MiB stream
    # window (the server waits for WINDOW_UPDATEs), than our 4 MiB one (the server must ack)
    sizes = {"f": 20 * 1024, "w": 100 * 1024, "n": 3 * 1024 * 1024, "s": 5 * 1024 * 1024}
    values = {ident: os.urandom(size) for ident, size in sizes.items()}
    with _server(tmp_path, "map", transport) as server:
        seen = _node(server, [
            {"op": "open", "call": "a", "path": MAP_FN},
            {"op": "send", "call": "a", "messages": [_handshake()]},
            *({"op": "send", "call": "a", "messages": [_map(i, v)]} for i, v in values.items()),
            {"op": "recv", "call": "a", "count": 5},
            {"op": "end", "call": "a"},
            {"op": "closed", "call": "a"},
        ], numa=True)
    replies = _replies(seen["calls"]["a"])[1:]
    assert {r.id: r.results[0].value for r in replies} == values
    assert seen["calls"]["a"]["trailers"]["grpc-status"] == "0"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_node_two_concurrent_streams(tmp_path: Path, transport: str) -> None:
    steps: list[dict[str, Any]] = [
        {"op": "open", "call": "a", "path": MAP_FN},
        {"op": "open", "call": "b", "path": MAP_FN},
        {"op": "send", "call": "a", "messages": [_handshake()]},
        {"op": "send", "call": "b", "messages": [_handshake()]},
    ]
    for n in range(20):
        steps += [{"op": "send", "call": "a", "messages": [_map(f"a{n}", b"x" * n)]},
                  {"op": "send", "call": "b", "messages": [_map(f"b{n}", b"y" * n)]}]
    steps += [{"op": "recv", "call": "a", "count": 21}, {"op": "recv", "call": "b", "count": 21}]
    with _server(tmp_path, "map", transport) as server:
        seen = _node(server, steps)
    for name, fill in (("a", b"x"), ("b", b"y")):
        replies = _replies(seen["calls"][name])[1:]
        assert [(r.id, r.results[0].value) for r in replies] == [
            (f"{name}{n}", fill * n) for n in range(20)]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_node_cancelled_calls_are_dropped(tmp_path: Path, transport: str) -> None:
    # A long grace: a call the server failed to drop would hold up the exit for 30 s.
    env = {"NUMAFLOW_GRPC_SHUTDOWN_GRACE_PERIOD_SECONDS": "30"}
    with _server(tmp_path / "map", "map", transport, env=env) as server:
        seen = _node(server, [
            {"op": "open", "call": "a", "path": MAP_FN},
            {"op": "send", "call": "a", "messages": [_handshake()]},
            {"op": "recv", "call": "a", "count": 1},
            {"op": "cancel", "call": "a"},
            {"op": "closed", "call": "a"},
            {"op": "open", "call": "b", "path": MAP_FN},
            {"op": "send", "call": "b", "messages": [_handshake(), _map("after", b"z")]},
            {"op": "recv", "call": "b", "count": 2},
        ])
        assert _replies(seen["calls"]["b"])[1].id == "after"
        started = time.monotonic()
        server.terminate()
        assert server.wait_exit()[0] == 0 and time.monotonic() - started < 15
    sink_batch = [base64.b64encode(sink_pb2.SinkRequest(
        request=sink_pb2.SinkRequest.Request(id="s", value=b"v")).SerializeToString()).decode()]
    hello = base64.b64encode(sink_pb2.SinkRequest(
        handshake=sink_pb2.Handshake(sot=True)).SerializeToString()).decode()
    with _server(tmp_path / "sink", "sink", transport, env=env) as server:
        _node(server, [  # the sink's task waits for the EOT that never comes: cancelled
            {"op": "open", "call": "s", "path": "/sink.v1.Sink/SinkFn"},
            {"op": "send", "call": "s", "messages": [hello, *sink_batch]},
            {"op": "recv", "call": "s", "count": 1},
            {"op": "cancel", "call": "s"},
            {"op": "closed", "call": "s"},
        ])
        started = time.monotonic()
        server.terminate()
        assert server.wait_exit()[0] == 0 and time.monotonic() - started < 15


def _error_trailers(tmp_path: Path, transport: str, value: bytes) -> tuple[str, str, bytes]:
    with _server(tmp_path / f"{transport}-{value.decode()}", "map", transport) as server:
        seen = _node(server, [
            {"op": "open", "call": "a", "path": MAP_FN},
            {"op": "send", "call": "a", "messages": [_handshake(), _map("bad", value)]},
            {"op": "closed", "call": "a"},
        ])
        assert server.wait_exit()[0] == 1
    trailers = seen["calls"]["a"]["trailers"]
    details = trailers["grpc-status-details-bin"]
    return (trailers["grpc-status"], trailers["grpc-message"],
            base64.b64decode(details + "=" * (-len(details) % 4)))


@pytest.mark.parametrize("value", [b"usererr", b"fail"])
def test_node_user_code_error_trailers_match_grpcio(tmp_path: Path, value: bytes) -> None:
    # Every byte of the trailers is equal: status, message, details (traceback included).
    grpc_side = _error_trailers(tmp_path, "grpc", value)
    assert _error_trailers(tmp_path, "h2", value) == grpc_side
    code, message, details = grpc_side
    status = status_pb2.Status.FromString(details)
    info = error_details_pb2.DebugInfo()
    assert code == "13" and status.code == 13 and status.message == message
    assert status.details[0].Unpack(info)
    if value == b"usererr":
        assert message == ("UDF_EXECUTION_ERROR(udf): step 'double' (app.py:7, double()) "
                           "raised KeyError('k')")
        assert info.detail.endswith("KeyError: 'k'\n")
    else:
        assert message == "UDF_EXECUTION_ERROR(udf): ValueError('boom')"
        assert 'raise ValueError("boom")' in info.detail


_SINK_HELLO = sink_pb2.SinkRequest(handshake=sink_pb2.Handshake(sot=True))
_SINK_EOT = sink_pb2.SinkRequest(status=sink_pb2.TransmissionStatus(eot=True))
_MAP_EOT = MapReq(status=map_pb2.TransmissionStatus(eot=True))


_READ = source_pb2.ReadRequest


@pytest.mark.parametrize(("kind", "path", "batch", "replies"), [
    ("sink", "/sink.v1.Sink/SinkFn", [
        _SINK_HELLO, sink_pb2.SinkRequest(request=sink_pb2.SinkRequest.Request(id="a", value=b"v")),
        _SINK_EOT], 3),  # the handshake's reply, the batch's answer, its EOT
    ("map", MAP_FN, [MapReq(handshake=map_pb2.Handshake(sot=True)),
                     MapReq(id="a", request=MapReq.Request(value=b"v")), _MAP_EOT], 3),
    ("source", "/source.v1.Source/ReadFn", [  # a queued call: the handler reads the requests
        _READ(handshake=source_pb2.Handshake(sot=True)),
        _READ(request=_READ.Request(num_records=3, timeout_in_ms=50))], 5),  # 3 records, EOT
], ids=["sink", "batch map", "source read"])
@pytest.mark.parametrize("bad", ["second handshake", "unparsable", "compressed"])
def test_node_requests_before_a_bad_one_are_answered_first(
    tmp_path: Path, kind: str, path: str, batch: list[Any], replies: int, bad: str
) -> None:
    """One write holds requests (a closed batch, a read) and then one that ends the call (a
    second handshake, bytes that do not parse, a compressed message: broken framing): both
    transports answer those before it, then end the call the same way."""
    tail = {"second handshake": [_b64(batch[0])],
            "unparsable": [base64.b64encode(b"\xff\xff").decode()], "compressed": []}[bad]
    raw = base64.b64encode(b"\x01\x00\x00\x00\x02ab").decode() if bad == "compressed" else ""
    reply = {"sink": sink_pb2.SinkResponse, "map": map_pb2.MapResponse,
             "source": source_pb2.ReadResponse}[kind]
    seen = {}
    for transport in TRANSPORTS:
        args = ("--ordered",) if kind == "map" else ()
        with _server(tmp_path / transport, kind, transport, *args) as server:
            got = _node(server, [
                {"op": "open", "call": "a", "path": path},
                {"op": "send", "call": "a", "messages": [*map(_b64, batch), *tail], "raw": raw},
                {"op": "closed", "call": "a"},
            ])["calls"]["a"]
        status = {**(got["headers"] or {}), **(got["trailers"] or {})}  # trailers-only or not
        seen[transport] = ([reply.FromString(base64.b64decode(m)) for m in got["messages"]],
                           status.get("grpc-status"), status.get("grpc-message"))
    assert seen["h2"][0] == seen["grpc"][0]
    assert len(seen["h2"][0]) == replies
    if bad == "second handshake":
        assert seen["h2"] == seen["grpc"]
    elif bad == "compressed":  # C-core resets the stream; h2 ends it with a status
        assert seen["h2"][1:] == ("12", "a compressed gRPC message arrived; no message encoding "
                                  "was negotiated (grpc-encoding identity)")
    else:  # grpcio says it in its words (a DecodeError through the handler or its own)
        assert seen["h2"][1:] == ("13", f"could not parse a request of {path}: DecodeError("
                                  f"\"Error parsing message with type '{kind}.v1."
                                  f"{reply.__name__.replace('Response', 'Request')}'\")")
        assert seen["grpc"][1] in ("2", "13")


@pytest.mark.parametrize(("kind", "path", "requests", "replies"), [
    ("sink", "/sink.v1.Sink/SinkFn", [
        _SINK_HELLO, sink_pb2.SinkRequest(request=sink_pb2.SinkRequest.Request(id="a", value=b"v")),
        _SINK_EOT], 3),
    ("source", "/source.v1.Source/ReadFn", [
        _READ(handshake=source_pb2.Handshake(sot=True)),
        _READ(request=_READ.Request(num_records=3, timeout_in_ms=50))], 5),
], ids=["sink", "source read"])
def test_a_half_close_after_broken_framing_still_answers_what_came_before(
    tmp_path: Path, kind: str, path: str, requests: list[Any], replies: int
) -> None:
    """The last message is cut across two reads; the second brings its end, a compressed
    message and END_STREAM. The half-close is not a stream ended mid-message: what came before
    is answered, then the call ends with the framing error (h2; found by a review)."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(1, request_headers(path))
    wire = b"".join(frame_message(r.SerializeToString()) for r in requests)
    with _server(tmp_path, kind, "h2") as server:
        server.wait_ready()
        sock = _raw(server)
        client.send_data(1, wire[:-3])
        sock.sendall(client.data_to_send())
        time.sleep(0.2)  # a read of its own
        client.send_data(1, wire[-3:] + b"\x01\x00\x00\x00\x02ab", end_stream=True)
        sock.sendall(client.data_to_send())
        body, status = b"", {}
        sock.settimeout(10)
        while not status:
            data = sock.recv(65536)
            assert data, "the server closed the connection without ending the call"
            for event in client.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    body += event.data
                    client.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, (h2.events.TrailersReceived, h2.events.ResponseReceived)):
                    headers = dict(event.headers)
                    if b"grpc-status" in headers:
                        status = headers
            sock.sendall(client.data_to_send())
        sock.close()
    assert len(MessageReader(1 << 20).feed(body)) == replies
    assert status[b"grpc-status"] == b"12"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_node_deadline_ends_the_call(tmp_path: Path, transport: str) -> None:
    with _server(tmp_path, "map", transport) as server:
        seen = _node(server, [
            {"op": "open", "call": "a", "path": MAP_FN, "timeout": "300m"},
            {"op": "send", "call": "a", "messages": [_handshake()]},
            {"op": "recv", "call": "a", "count": 1},
            {"op": "closed", "call": "a"},
            {"op": "open", "call": "b", "path": MAP_FN},
            {"op": "send", "call": "b", "messages": [_handshake()]},
            {"op": "recv", "call": "b", "count": 1},
        ])
    assert (seen["calls"]["a"]["trailers"] or {}).get("grpc-status") == "4"
    assert len(seen["calls"]["b"]["messages"]) == 1  # the server still serves


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_node_unknown_method_is_unimplemented(tmp_path: Path, transport: str) -> None:
    with _server(tmp_path, "map", transport) as server:
        seen = _node(server, [
            {"op": "open", "call": "a", "path": "/map.v1.Map/NoSuchFn"},
            {"op": "send", "call": "a", "messages": [_handshake()]},
            {"op": "closed", "call": "a"},
        ])
    call = seen["calls"]["a"]
    status = {**(call["headers"] or {}), **(call["trailers"] or {})}  # trailers-only or not
    assert status["grpc-status"] == "12" and not call["messages"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("then", ["half-close", "wait"])
def test_node_sigterm_answers_in_flight_work_then_goaway(tmp_path: Path, transport: str,
                                                         then: str) -> None:
    steps: list[dict[str, Any]] = [
        {"op": "open", "call": "a", "path": MAP_FN},
        {"op": "send", "call": "a", "messages": [_handshake()]},
        {"op": "recv", "call": "a", "count": 1},
        {"op": "send", "call": "a", "messages": [_map("slow", b"slow")]},
        {"op": "recv", "call": "a", "count": 2},
        {"op": "goaway"},
        *([{"op": "end", "call": "a"}] if then == "half-close" else []),
        {"op": "closed", "call": "a"},
        {"op": "wait_closed"},
    ]
    with _server(tmp_path, "map", transport) as server:
        script = tmp_path / "script.json"
        script.write_text(_node_script(server, steps))
        with open(script) as stdin:
            client = subprocess.Popen([_need_node(), str(NODE_CLIENT)], stdin=stdin,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: (server.marks / "slow-started").exists(), "the slow handler to start")
        server.terminate(signal.SIGTERM)
        out, err = client.communicate(timeout=30)
        assert client.returncode == 0, err
        code, server_err = server.wait_exit()
    assert code == 0, server_err
    seen = json.loads(out)
    replies = _replies(seen["calls"]["a"])
    assert replies[1].id == "slow" and replies[1].results[0].value == b"slow"
    assert seen["goaway"]["code"] == 0 and seen["sessionClosed"], (seen, server_err)
    if then == "half-close":  # the call ended on its own before the grace: OK
        assert seen["calls"]["a"]["trailers"]["grpc-status"] == "0"


# ---------------------------------------------------------------- broken clients (raw sockets)


def _raw(server: ServerProcess) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    sock.connect(str(server.socket_path))
    return sock


def _read_to_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


GOAWAY = 7  # the HTTP/2 frame type


def _frame_types(data: bytes) -> list[int]:
    """The type of each HTTP/2 frame in ``data`` (9-byte headers: length, type, flags, id)."""
    types, pos = [], 0
    while pos + 9 <= len(data):
        types.append(data[pos + 3])
        pos += 9 + int.from_bytes(data[pos:pos + 3], "big")
    return types


def _is_ready(server: ServerProcess) -> bool:
    with server.channel() as channel:
        return bool(map_pb2_grpc.MapStub(channel).IsReady(empty_pb2.Empty(), timeout=10).ready)


def _call_bytes(path: str, messages: list[bytes]) -> bytes:
    """What an h2 client writes to open a call of ``path`` and send ``messages`` on it."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, request_headers(path))
    conn.send_data(1, b"".join(frame_message(m) for m in messages))
    return conn.data_to_send()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_garbage_bytes_close_only_that_connection(tmp_path: Path, transport: str) -> None:
    with _server(tmp_path, "map", transport) as server:
        keeper = server.channel()  # a healthy connection, open throughout
        stub = map_pb2_grpc.MapStub(keeper)
        assert stub.IsReady(empty_pb2.Empty(), timeout=10).ready
        not_http2 = _raw(server)
        not_http2.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(64))
        _read_to_eof(not_http2)  # the server closed it
        bad_frame = _raw(server)
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        # a valid preface and SETTINGS, then a SETTINGS frame 5 bytes long (FRAME_SIZE_ERROR)
        bad_frame.sendall(client.data_to_send() + b"\x00\x00\x05\x04\x00\x00\x00\x00\x00garb!")
        frames = _frame_types(_read_to_eof(bad_frame))  # the server closed it...
        if transport == "h2":
            assert frames[-1] == GOAWAY  # ...after a GOAWAY (C-core just closes)
        assert stub.IsReady(empty_pb2.Empty(), timeout=10).ready
        assert _is_ready(server)
        keeper.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_abrupt_client_close_mid_stream(tmp_path: Path, transport: str) -> None:
    hello = MapReq(handshake=map_pb2.Handshake(sot=True)).SerializeToString()
    with _server(tmp_path / "map", "map", transport) as server:
        for _ in range(3):
            sock = _raw(server)
            requests = [MapReq(id=str(i)).SerializeToString() for i in range(100)]
            wire = _call_bytes(MAP_FN, [hello, *requests])
            sock.sendall(wire[: len(wire) - 7])  # cut inside the DATA frame
            sock.close()  # no GOAWAY, no RST_STREAM
        assert _is_ready(server)
    hello_sink = sink_pb2.SinkRequest(handshake=sink_pb2.Handshake(sot=True)).SerializeToString()
    with _server(tmp_path / "sink", "sink", transport) as server:
        sock = _raw(server)
        sock.sendall(_call_bytes("/sink.v1.Sink/SinkFn", [hello_sink, sink_pb2.SinkRequest(
            request=sink_pb2.SinkRequest.Request(id="x", value=b"v")).SerializeToString()]))
        sock.recv(65536)  # the server is in the call
        sock.close()
        seen = asyncio.run(_sink_once(server))
        assert seen == {"y": (True, "")}


async def _sink_once(server: ServerProcess) -> dict[str, tuple[bool, str]]:
    async with grpc.aio.insecure_channel(f"unix://{server.socket_path}") as channel:
        sink = await SinkClient.open(channel)
        result = await sink.write([SinkDatum("y", b"fine")])
        await sink.close()
        return result

