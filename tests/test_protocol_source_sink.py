"""Conformance of the source and sink servers, driven with nfbuilder's own stubs."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2, timestamp_pb2
from protocol_harness import Duplex, ServerProcess, wait_for

from nfbuilder._proto import sink_pb2, sink_pb2_grpc, source_pb2, source_pb2_grpc

Read = source_pb2.ReadRequest
Ack = source_pb2.AckRequest


def _open(method: object, first: object) -> Duplex:
    stream = Duplex(method)
    stream.send(first)
    reply = stream.recv()
    assert reply.HasField("handshake") and reply.handshake.sot
    return stream


def _read(stream: Duplex, n: int) -> list[source_pb2.ReadResponse]:
    stream.send(Read(request=Read.Request(num_records=n, timeout_in_ms=100)))
    out = []
    while True:
        response = stream.recv()
        if response.status.eot:
            assert not response.HasField("result")
            return out
        assert response.HasField("result")
        out.append(response)


def test_source_read_ack_nack_pending_partitions(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, "source", "--count", "10") as server:
        stub = source_pb2_grpc.SourceStub(server.channel())
        assert stub.IsReady(empty_pb2.Empty()).ready
        reader = _open(stub.ReadFn, Read(handshake=source_pb2.Handshake(sot=True)))
        acker = _open(stub.AckFn, Ack(handshake=source_pb2.Handshake(sot=True)))

        batch = _read(reader, 4)
        results = [r.result for r in batch]
        assert [r.payload for r in results] == [b"m0", b"m1", b"m2", b"m3"]
        assert [r.offset.offset for r in results] == [b"0", b"1", b"2", b"3"]
        assert all(r.HasField("event_time") for r in results)
        assert results[2].event_time == timestamp_pb2.Timestamp(seconds=2)
        assert list(results[0].keys) == ["k"] and dict(results[0].headers) == {"h": "v"}
        assert dict(results[1].metadata.user_metadata["g"].key_value) == {"i": b"1"}
        assert stub.PendingFn(empty_pb2.Empty()).result.count == 6

        # Exactly one AckResponse per AckRequest, even for several requests in a row.
        acker.send(
            Ack(request=Ack.Request(
                offsets=[source_pb2.Offset(offset=b"0"), source_pb2.Offset(offset=b"1")]
            )),
            Ack(request=Ack.Request(offsets=[source_pb2.Offset(offset=b"2")])),
        )
        assert [r.result.HasField("success") for r in acker.recv_n(2)] == [True, True]
        wait_for(lambda: (server.marks / "acked-0,1").exists(), "first ack")
        assert (server.marks / "acked-2").exists()

        # v1.8.2 NackRequest: one Request per offset; all of them reach the handler at once.
        nack = source_pb2.NackRequest(
            request=[
                source_pb2.NackRequest.Request(offsets=[source_pb2.Offset(offset=b"3")]),
                source_pb2.NackRequest.Request(offsets=[source_pb2.Offset(offset=b"4")]),
            ]
        )
        assert stub.NackFn(nack).result.HasField("success")
        assert stub.PendingFn(empty_pb2.Empty()).result.count == 8
        assert [r.result.payload for r in _read(reader, 2)] == [b"m3", b"m4"]

        assert _read(reader, 100)[-1].result.payload == b"m9"
        assert _read(reader, 100) == []  # an immediate EOT is a legal empty batch
        partitions = stub.PartitionsFn(empty_pb2.Empty()).result
        assert list(partitions.partitions) == [0] and partitions.total_partitions == 1
        reader.close()
        acker.close()


def test_source_empty_offset_is_a_user_code_error(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, "source", "--bad-offset", "1") as server:
        stub = source_pb2_grpc.SourceStub(server.channel())
        reader = _open(stub.ReadFn, Read(handshake=source_pb2.Handshake(sot=True)))
        reader.send(Read(request=Read.Request(num_records=5, timeout_in_ms=10)))
        assert reader.recv().result.payload == b"m0"
        with pytest.raises(grpc.RpcError) as err:
            reader.recv()
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert err.value.details() == (
            "UDF_EXECUTION_ERROR(udsource): ValueError(\"source handler returned a message with "
            "an empty offset (payload b'm1'); every SourceMessage needs non-empty offset "
            "bytes\")"
        )
        assert server.wait_exit()[0] == 1


def test_source_unary_error_takes_the_fatal_path(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, "source") as server:
        stub = source_pb2_grpc.SourceStub(server.channel())
        bad = source_pb2.NackRequest(
            request=[source_pb2.NackRequest.Request(offsets=[source_pb2.Offset(offset=b"boom")])]
        )
        with pytest.raises(grpc.RpcError) as err:
            stub.NackFn(bad, timeout=10)
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert err.value.details() == (
            "UDF_EXECUTION_ERROR(udsource): ValueError(\"invalid literal for int() with base 10: "
            "b'boom'\")"
        )
        assert server.wait_exit()[0] == 1


def test_source_first_request_must_be_a_handshake(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, "source") as server:
        stub = source_pb2_grpc.SourceStub(server.channel())
        acker = Duplex(stub.AckFn)
        acker.send(Ack(request=Ack.Request(offsets=[source_pb2.Offset(offset=b"0")])))
        with pytest.raises(grpc.RpcError) as err:
            acker.recv()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("AckFn: the first request must be a handshake")


# --- sink --------------------------------------------------------------------------------

Sink = sink_pb2.SinkRequest
EOT = Sink(status=sink_pb2.TransmissionStatus(eot=True))


def _sink_req(ident: str, value: bytes) -> sink_pb2.SinkRequest:
    return Sink(request=Sink.Request(id=ident, value=value))


def _sink_batch(stream: Duplex, *items: tuple[str, bytes]) -> dict[str, tuple[int, str]]:
    stream.send(*(_sink_req(i, v) for i, v in items), EOT)
    got: dict[str, tuple[int, str]] = {}
    while True:
        response = stream.recv()
        if response.HasField("status") and response.status.eot:
            assert not response.results
            return got
        for r in response.results:
            assert r.id not in got
            got[r.id] = (r.status, r.err_msg)


def test_sink_batches(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, "sink") as server:
        stub = sink_pb2_grpc.SinkStub(server.channel())
        assert stub.IsReady(empty_pb2.Empty()).ready
        stream = _open(stub.SinkFn, Sink(handshake=sink_pb2.Handshake(sot=True)))
        got = _sink_batch(stream, ("a", b"one"), ("b", b"bad1"), ("c", b"two"))
        assert got == {
            "a": (sink_pb2.SUCCESS, ""),
            "b": (sink_pb2.FAILURE, "rejected b'bad1'"),
            "c": (sink_pb2.SUCCESS, ""),
        }
        assert _sink_batch(stream, ("d", b"three")) == {"d": (sink_pb2.SUCCESS, "")}
        assert (server.marks / "sunk").read_bytes() == b"one\ntwo\nthree\n"
        stream.close()


def test_sink_handler_error_has_the_sink_prefix(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, "sink") as server:
        stream = _open(
            sink_pb2_grpc.SinkStub(server.channel()).SinkFn,
            Sink(handshake=sink_pb2.Handshake(sot=True)),
        )
        stream.send(_sink_req("a", b"raise"), EOT)
        with pytest.raises(grpc.RpcError) as err:
            stream.recv()
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert err.value.details() == (
            "UDF_EXECUTION_ERROR(udsink): UDSinkError, OSError('disk on fire')"
        )
        assert server.wait_exit()[0] == 1


def test_sink_missing_result_is_an_error(tmp_path: Path) -> None:
    env = {"NUMAFLOW_UD_CONTAINER_TYPE": "fb-udsink"}
    server = ServerProcess(tmp_path, "sink", env=env)
    server.info_path = server.socket_dir / "fb-sinker-server-info"
    server.socket_path = server.socket_dir / "fb-sink.sock"
    with server:
        stream = _open(
            sink_pb2_grpc.SinkStub(server.channel()).SinkFn,
            Sink(handshake=sink_pb2.Handshake(sot=True)),
        )
        stream.send(_sink_req("a", b"ok"), _sink_req("b", b"skip"), EOT)
        with pytest.raises(grpc.RpcError) as err:
            stream.recv()
        assert err.value.details() == (
            "UDF_EXECUTION_ERROR(fb-udsink): UDSinkError, ValueError(\"sink handler must return "
            "exactly one result per input id; missing ids ['b'], unknown ids [], duplicate ids "
            "[] (batch of 2)\")"
        )
        assert server.wait_exit()[0] == 1
