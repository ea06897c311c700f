"""The numa-like clients (nfbuilder.local) against pynumaflow 0.14.0 servers and small fakes.

pynumaflow is an independent implementation of the same contract; it runs in a subprocess
(tests/pynumaflow_servers.py) because its generated code and ours cannot share one process.
Fakes for contract violations are in-process grpc.aio servers built on our own stubs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
import pytest

from nfbuilder._proto import map_pb2, map_pb2_grpc, sink_pb2, sink_pb2_grpc
from nfbuilder.local.clients import (
    ConnectTimeout,
    MapClient,
    Partitions,
    SinkClient,
    SinkDatum,
    SourceClient,
    TransformClient,
    UdfProtocolError,
    UdfStreamError,
    connect,
    wait_ready,
)
from nfbuilder.local.serverinfo import (
    ServerInfo,
    ServerInfoError,
    parse_server_info,
    wait_server_info,
)

T = TypeVar("T")
LAUNCHER = Path(__file__).with_name("pynumaflow_servers.py")
# kind -> (socket name, server-info name, NUMAFLOW_UD_CONTAINER_TYPE)
FILES = {
    "map": ("map.sock", "mapper-server-info", "udf"),
    "transform": ("sourcetransform.sock", "sourcetransformer-server-info", "transformer"),
    "sink": ("sink.sock", "sinker-server-info", "udsink"),
    "source": ("source.sock", "sourcer-server-info", "udsource"),
}
FAST = {"retry_s": 0.05, "deadline_s": 20.0}
NS = 1_000_000_000


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))  # type: ignore[arg-type]


def info_bytes(**fields: Any) -> bytes:
    base = {"protocol": "uds", "language": "python", "minimum_numaflow_version": "1.4.0-z",
            "version": "0.14.0", "metadata": {"MAP_MODE": "unary-map"}}
    base.update(fields)
    return json.dumps(base).encode() + b"U+005C__END__"


@contextlib.contextmanager
def pynumaflow(tmp_path: Path, kind: str) -> Iterator[tuple[Path, Path]]:
    """Run a pynumaflow server of ``kind``; yields (socket path, server-info path)."""
    sock_name, info_name, container = FILES[kind]
    sock, info = tmp_path / sock_name, tmp_path / info_name
    env = {**os.environ, "NUMAFLOW_UD_CONTAINER_TYPE": container,
           "NUMAFLOW_GRPC_SHUTDOWN_GRACE_PERIOD_SECONDS": "1"}
    with open(tmp_path / f"{kind}.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(LAUNCHER), "--kind", kind, "--sock", str(sock),
             "--info", str(info)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield sock, info
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def dial(sock: Path, info_path: Path, stub_class: Any) -> tuple[ServerInfo, grpc.aio.Channel]:
    """numa's start-up order: server-info, connect, IsReady."""
    info = await wait_server_info(info_path, poll_s=0.05, deadline_s=20)
    channel = await connect(sock, **FAST)
    await wait_ready(stub_class(channel), **FAST)
    return info, channel


# ---------------------------------------------------------------- server-info


def test_parse_accepts_pynumaflow_format_and_derives_capabilities() -> None:
    info = parse_server_info(info_bytes(), "mapper", source="x")
    assert (info.protocol, info.language, info.version) == ("uds", "python", "0.14.0")
    assert info.map_mode == "unary-map" and info.supports_nack
    old = parse_server_info(info_bytes(version="0.10.0", metadata={"MAP_MODE": "odd"}), "mapper")
    assert old.map_mode == "unary-map" and not old.supports_nack
    assert parse_server_info(info_bytes(metadata={"MAP_MODE": "batch-map"}),
                             "mapper").map_mode == "batch-map"
    assert parse_server_info(info_bytes(protocol="tcp"), "mapper").protocol == "tcp"
    # An unknown language skips the SDK check (and disables nack), as in numa >= 1.8.
    odd = parse_server_info(info_bytes(language="cobol", version="0.0.1"), "mapper")
    assert not odd.supports_nack


def test_missing_marker_is_refused_after_retries(tmp_path: Path) -> None:
    path = tmp_path / "mapper-server-info"
    path.write_bytes(info_bytes()[: -len(b"U+005C__END__")] + b"\\__END__")  # a real backslash
    with pytest.raises(ServerInfoError) as err:
        run(wait_server_info(path, poll_s=0.01, marker_retry_s=0.01))
    assert str(err.value).startswith(
        f"server-info file {path}: missing the end marker 'U+005C__END__' after 10 reads")
    assert "followed directly by the 13-byte marker" in str(err.value)


def test_marker_written_late_is_picked_up(tmp_path: Path) -> None:
    path = tmp_path / "sinker-server-info"
    body = info_bytes()

    async def scenario() -> ServerInfo:
        path.write_bytes(body[:-13])  # a non-atomic writer, caught half-way

        async def finish() -> None:
            while not path.exists():  # noqa: ASYNC110 - polls the file system, no event exists
                await asyncio.sleep(0.01)
            path.write_bytes(body)

        finisher = asyncio.create_task(finish())
        info = await wait_server_info(path, poll_s=0.01, marker_retry_s=0.05)
        await finisher
        return info

    assert run(scenario()).container_type == "sinker"


def test_missing_file_times_out_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "sourcer-server-info"
    with pytest.raises(ServerInfoError, match=r"did not appear \(or stayed empty\) within 0.1 s"):
        run(wait_server_info(path, poll_s=0.02, deadline_s=0.1))


def test_too_new_minimum_numaflow_version() -> None:
    with pytest.raises(ServerInfoError) as err:
        parse_server_info(info_bytes(minimum_numaflow_version="1.9.0-z"), "mapper", source="f")
    assert str(err.value) == (
        "server-info file f: the server requires numaflow >= '1.9.0-z' but this engine is "
        "1.8.3; numaflow version 1.8.3 must be upgraded, or the server must declare a lower "
        "minimum_numaflow_version")


@pytest.mark.parametrize(("engine", "ok"), [
    ("1.4.0", True), ("1.4.0-rc1", False), ("1.5.0-rc1", True), ("1.3.9", False),
    ("v1.8.3", True), ("latest", True)])
def test_minimum_version_z_rule(engine: str, ok: bool) -> None:
    raw = info_bytes(minimum_numaflow_version="1.4.0-z")
    if ok:
        parse_server_info(raw, "mapper", engine_version=engine)
    else:
        with pytest.raises(ServerInfoError, match="must be upgraded"):
            parse_server_info(raw, "mapper", engine_version=engine)


def test_non_string_metadata_value() -> None:
    with pytest.raises(ServerInfoError) as err:
        parse_server_info(info_bytes(metadata={"MULTIPROC": 4}), "mapper", source="f")
    assert str(err.value) == (
        "server-info file f: metadata value for 'MULTIPROC' must be a JSON string, received "
        "int 4; numa cannot parse such a file (quote the value)")


def test_sdk_version_table_per_container_type() -> None:
    # ons-sinker needs >= 0.11.1 (stable) while a primary sinker accepts 0.9.0.
    parse_server_info(info_bytes(version="0.11.0"), "sinker")
    with pytest.raises(ServerInfoError) as err:
        parse_server_info(info_bytes(version="0.11.0"), "ons-sinker", source="f")
    assert str(err.value) == (
        "server-info file f: python SDK version '0.11.0' is below the minimum '0.11.1rc100' for "
        "container type 'ons-sinker'; upgrade the SDK or report a newer version")
    with pytest.raises(ServerInfoError, match="is below the minimum '0.9.0rc100'"):
        parse_server_info(info_bytes(version="0.9.0rc1"), "mapper")
    with pytest.raises(ServerInfoError, match="no python SDK version constraint for container "
                                              "type 'unknown'"):
        parse_server_info(info_bytes(), "unknown")
    with pytest.raises(ServerInfoError, match="'not-a-version' is not a PEP 440 version"):
        parse_server_info(info_bytes(version="not-a-version"), "mapper")


def test_malformed_json_is_reported() -> None:
    with pytest.raises(ServerInfoError, match="is not valid JSON"):
        parse_server_info(b'{"protocol": U+005C__END__', "mapper")


# ---------------------------------------------------------------- map


def test_map_correlates_200_concurrent_requests_by_id(tmp_path: Path) -> None:
    async def scenario() -> None:
        with pynumaflow(tmp_path, "map") as (sock, info_path):
            info, channel = await dial(sock, info_path, map_pb2_grpc.MapStub)
            assert info.container_type == "mapper" and info.map_mode == "unary-map"
            client = await MapClient.open(channel, max_in_flight=200)
            finished: list[int] = []

            async def one(i: int) -> None:
                value = b"slow:%d" % ((i * 7919) % 23)  # scrambles the reply order
                results = await client.map(f"v-{i}-0", (f"k{i}",), value, event_time_ns=i * NS)
                assert [(r.value, r.keys) for r in results] == [(value, (f"k{i}",))]
                finished.append(i)

            await asyncio.gather(*(one(i) for i in range(200)))
            assert sorted(finished) == list(range(200))
            assert finished != list(range(200)), "replies should have arrived out of order"
            meta = {"nfbuilder": {"pipeline": b"p1"}}
            echoed = await client.map("v-x-0", (), b"m", 5, watermark_ns=1, headers={"h": "v"},
                                      user_metadata=meta)
            assert echoed[0].user_metadata == meta
            await client.close()
            await channel.close()

    run(scenario())


def test_map_stream_error_fails_every_pending_call(tmp_path: Path) -> None:
    async def scenario() -> None:
        with pynumaflow(tmp_path, "map") as (sock, info_path):
            _, channel = await dial(sock, info_path, map_pb2_grpc.MapStub)
            client = await MapClient.open(channel)
            slow = asyncio.ensure_future(client.map("slow", (), b"slow:5000", 0))
            with pytest.raises(UdfStreamError) as err:
                await client.map("boom", (), b"boom", 0)
            exc = err.value
            assert exc.code == grpc.StatusCode.INTERNAL
            assert exc.message == "UDF_EXECUTION_ERROR(udf): ValueError('boom')"
            assert exc.container == "udf"
            assert "Traceback" in exc.debug_info and "ValueError: boom" in exc.debug_info
            assert str(exc).startswith(
                "map MapFn stream failed: INTERNAL: UDF_EXECUTION_ERROR(udf): ValueError('boom')"
                "\n--- UDF debug info ---\nTraceback")
            with pytest.raises(UdfStreamError) as pending_err:
                await slow
            assert pending_err.value is exc
            with pytest.raises(UdfStreamError):  # later calls fail at once
                await client.map("after", (), b"x", 0)
            await client.close()
            await channel.close()

    run(scenario())


# ---------------------------------------------------------------- transformer


def test_transformer_event_time_and_empty_results(tmp_path: Path) -> None:
    from nfbuilder._proto import sourcetransform_pb2_grpc

    async def scenario() -> None:
        with pynumaflow(tmp_path, "transform") as (sock, info_path):
            info, channel = await dial(sock, info_path,
                                       sourcetransform_pb2_grpc.SourceTransformStub)
            assert info.container_type == "sourcetransformer"
            client = await TransformClient.open(channel)
            t = 1_700_000_000 * NS + 123_456_000
            outs = await asyncio.gather(*(
                client.transform(f"b2Zm{i}-0", ("k",), b"v%d" % i, event_time_ns=t)
                for i in range(20)))
            assert all(o[0].event_time_ns == t + 3600 * NS for o in outs)
            assert [o[0].value for o in outs] == [b"v%d" % i for i in range(20)]
            with pytest.raises(UdfProtocolError) as err:
                await client.transform("eA==-0", (), b"empty", event_time_ns=t)
            assert str(err.value).startswith(
                "UDF_PARTIAL_RESPONSE(transformer): transformer SourceTransformFn stream "
                "answered id 'eA==-0' with an empty results list")
            await client.close()
            await channel.close()

    run(scenario())


# ---------------------------------------------------------------- sink


def test_sink_batches_return_one_outcome_per_id(tmp_path: Path) -> None:
    async def scenario() -> None:
        with pynumaflow(tmp_path, "sink") as (sock, info_path):
            info, channel = await dial(sock, info_path, sink_pb2_grpc.SinkStub)
            assert info.container_type == "sinker"
            client = await SinkClient.open(channel)
            batch = [SinkDatum(id=f"out-{i}-0", value=b"fail" if i % 3 == 0 else b"ok",
                               keys=("k",), event_time_ns=i * NS, watermark_ns=0)
                     for i in range(7)]
            outcome = await client.write(batch)
            assert outcome == {f"out-{i}-0": ((False, "rejected fail") if i % 3 == 0
                                              else (True, "")) for i in range(7)}
            again = await client.write([SinkDatum(id="out-0-0", value=b"ok")])  # the retry
            assert again == {"out-0-0": (True, "")}
            with pytest.raises(ValueError, match="duplicate ids in the batch: \\['a'\\]"):
                await client.write([SinkDatum(id="a", value=b""), SinkDatum(id="a", value=b"")])
            await client.close()
            await channel.close()

    run(scenario())


# ---------------------------------------------------------------- source


def test_source_read_ack_nack_pending_partitions(tmp_path: Path) -> None:
    from nfbuilder._proto import source_pb2_grpc

    async def scenario() -> None:
        with pynumaflow(tmp_path, "source") as (sock, info_path):
            info, channel = await dial(sock, info_path, source_pb2_grpc.SourceStub)
            assert info.container_type == "sourcer" and info.supports_nack
            client = await SourceClient.open(channel, supports_nack=info.supports_nack)
            records = await client.read(10, timeout_ms=100)
            assert [r.payload for r in records] == [f"msg-{i}".encode() for i in range(10)]
            first = records[0]
            assert (first.offset, first.partition_id, first.keys, first.headers) == (
                b"0", 3, ("k",), {"h": "v"})
            assert first.event_time_ns == 1_704_164_645_123_456_000
            # Operations issued together are serialised, never overlapping.
            pending, parts, _ = await asyncio.gather(
                client.pending(), client.partitions(),
                client.ack([(r.offset, r.partition_id) for r in records[1:]]))
            assert pending == 15
            assert parts == Partitions(partitions=(3,), total=4)
            assert await client.nack([(b"0", 3)]) is True
            again = await client.read(2, timeout_ms=100)
            assert [r.payload for r in again] == [b"msg-0", b"msg-10"]
            rest = await client.read(100, timeout_ms=100)
            assert len(rest) == 14
            assert await client.read(5, timeout_ms=50) == []  # an immediate EOT is fine
            assert await client.pending() == 0
            with pytest.raises(ValueError, match="no offsets"):
                await client.ack([])
            await client.close()
            await channel.close()

    run(scenario())


# ---------------------------------------------------------------- contract violations (fakes)


@contextlib.asynccontextmanager
async def fake_server(tmp_path: Path, add: Callable[[grpc.aio.Server], None]
                      ) -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server()
    add(server)
    sock = tmp_path / "fake.sock"
    server.add_insecure_port(f"unix://{sock}")
    await server.start()
    channel = await connect(sock, **FAST)
    try:
        yield channel
    finally:
        await channel.close()
        await server.stop(None)


class BadMap(map_pb2_grpc.MapServicer):
    async def MapFn(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        async for _ in request_iterator:
            yield map_pb2.MapResponse(id="no-handshake")

    async def IsReady(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")


def test_map_requires_a_handshake_reply(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with fake_server(
                tmp_path, lambda s: map_pb2_grpc.add_MapServicer_to_server(BadMap(), s)) as ch:
            with pytest.raises(UdfProtocolError) as err:
                await MapClient.open(ch)
            assert str(err.value).startswith(
                "map MapFn stream: invalid handshake response, expected handshake.sot=true as "
                "the first reply, received MapReply(id='no-handshake', results=[], "
                "handshake=None, eot=None)")
            with pytest.raises(ConnectTimeout, match=r"IsReady did not succeed within 0.2 s "
                                                     r"\(last error UNAVAILABLE: warming up\)"):
                await wait_ready(map_pb2_grpc.MapStub(ch), retry_s=0.05, deadline_s=0.2)

    run(scenario())


class PartialSink(sink_pb2_grpc.SinkServicer):
    """Answers batch N according to ``plans[N]``: a list of result ids, then EOT."""

    def __init__(self, plans: list[list[str]]) -> None:
        self.plans = plans

    async def SinkFn(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        batch = 0
        async for request in request_iterator:
            if request.HasField("handshake"):
                yield sink_pb2.SinkResponse(handshake=sink_pb2.Handshake(sot=True))
            elif request.status.eot:
                yield sink_pb2.SinkResponse(results=[
                    sink_pb2.SinkResponse.Result(id=i, status=sink_pb2.SUCCESS)
                    for i in self.plans[batch]])
                yield sink_pb2.SinkResponse(status=sink_pb2.TransmissionStatus(eot=True))
                batch += 1


@pytest.mark.parametrize(("plan", "message"), [
    (["a"], ("UDF_PARTIAL_RESPONSE(udsink): sink SinkFn stream sent EOT after 1 of 2 results; "
            "missing ids ['b']")),
    (["a", "b", "zz"], ("sink SinkFn stream: result for unknown id 'zz'; every result must echo "
                       "the id of a request in the batch")),
    (["a", "a", "b"], "sink SinkFn stream: duplicate result for id 'a'"),
])
def test_sink_ids_must_match_one_to_one(tmp_path: Path, plan: list[str], message: str) -> None:
    async def scenario() -> None:
        servicer = PartialSink([plan])
        async with fake_server(
                tmp_path, lambda s: sink_pb2_grpc.add_SinkServicer_to_server(servicer, s)) as ch:
            client = await SinkClient.open(ch)
            with pytest.raises(UdfProtocolError) as err:
                await client.write([SinkDatum(id="a", value=b"1"), SinkDatum(id="b", value=b"2")])
            assert str(err.value) == message
            with pytest.raises(UdfProtocolError):  # the stream is out of step: stays broken
                await client.write([SinkDatum(id="c", value=b"3")])

    run(scenario())


def test_connect_deadline(tmp_path: Path) -> None:
    sock = tmp_path / "nobody.sock"
    with pytest.raises(ConnectTimeout) as err:
        run(connect(sock, retry_s=0.05, deadline_s=0.2))
    assert str(err.value) == (
        f"could not connect to the UDF socket {sock} within 0.2 s (retrying every 0.05 s); check "
        "that the vertex process is running and binds that path")
