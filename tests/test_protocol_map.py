"""Conformance of the map and source-transformer servers, driven with nfbuilder's own stubs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2, timestamp_pb2
from protocol_harness import Duplex, ServerProcess

from nfbuilder._proto import (
    map_pb2,
    map_pb2_grpc,
    metadata_pb2,
    sourcetransform_pb2,
    sourcetransform_pb2_grpc,
)

MapReq = map_pb2.MapRequest
TrReq = sourcetransform_pb2.SourceTransformRequest
DROP = "U+005C__DROP__"


@pytest.fixture(scope="module")
def map_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("map"), "map") as server:
        yield server


@pytest.fixture(scope="module")
def map_stub(map_server: ServerProcess) -> map_pb2_grpc.MapStub:
    return map_pb2_grpc.MapStub(map_server.channel())


def _open_map(stub: map_pb2_grpc.MapStub) -> Duplex:
    stream = Duplex(stub.MapFn)
    stream.send(MapReq(handshake=map_pb2.Handshake(sot=True)))
    first = stream.recv()
    assert first.HasField("handshake") and first.handshake.sot and not first.results
    return stream


def _req(ident: str, value: bytes, **kw: object) -> MapReq:
    return MapReq(id=ident, request=MapReq.Request(value=value, **kw))  # type: ignore[arg-type]


def test_is_ready(map_stub: map_pb2_grpc.MapStub) -> None:
    assert map_stub.IsReady(empty_pb2.Empty()).ready is True


def test_one_response_per_id_echoing_it(map_stub: map_pb2_grpc.MapStub) -> None:
    stream = _open_map(map_stub)
    ids = [f"v-{i}-0" for i in range(200)]
    stream.send(*(_req(i, i.encode(), keys=["k"]) for i in ids))
    responses = stream.recv_n(200)
    assert sorted(r.id for r in responses) == sorted(ids)
    for r in responses:
        (result,) = r.results
        assert result.value == r.id.encode() and list(result.keys) == ["k"]
        assert list(result.tags) == ["echo"]
    stream.close()


def test_datum_fields_and_user_metadata_round_trip(map_stub: map_pb2_grpc.MapStub) -> None:
    stream = _open_map(map_stub)
    meta = metadata_pb2.Metadata(
        user_metadata={"nfbuilder": metadata_pb2.KeyValueGroup(key_value={"pipeline": b"p1"})},
        sys_metadata={"tracing": metadata_pb2.KeyValueGroup(key_value={"t": b"x"})},
    )
    stream.send(
        _req(
            "a", b"x",
            event_time=timestamp_pb2.Timestamp(seconds=5, nanos=7),
            watermark=timestamp_pb2.Timestamp(seconds=4),
            headers={"h": "hv"},
            metadata=meta,
        )
    )
    (result,) = stream.recv().results
    user = {k: dict(g.key_value) for k, g in result.metadata.user_metadata.items()}
    assert user == {
        "nfbuilder": {"pipeline": b"p1"},
        "seen": {"wm": b"4000000000", "et": b"5000000007", "hdr": b"hv"},
    }
    assert not result.metadata.sys_metadata  # read-only for UDFs: never echoed
    stream.send(_req("b", b"x"))  # no watermark -> None, no metadata
    (result,) = stream.recv().results
    assert dict(result.metadata.user_metadata["seen"].key_value)["wm"] == b"None"
    stream.close()


def test_several_and_zero_results(map_stub: map_pb2_grpc.MapStub) -> None:
    stream = _open_map(map_stub)
    stream.send(_req("two", b"two"))
    response = stream.recv()
    assert response.id == "two"
    assert [(r.value, list(r.keys), list(r.tags)) for r in response.results] == [
        (b"a", [], ["t1"]),
        (b"b", ["k2"], []),
    ]
    assert not response.results[0].HasField("metadata")
    stream.send(_req("none", b"none"))
    response = stream.recv()
    assert response.id == "none" and len(response.results) == 0  # legal for map
    stream.close()


def test_first_request_must_be_a_handshake(map_stub: map_pb2_grpc.MapStub) -> None:
    stream = Duplex(map_stub.MapFn)
    stream.send(_req("a", b"x"))
    with pytest.raises(grpc.RpcError) as err:
        stream.recv()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == (
        "MapFn: the first request must be a handshake (handshake.sot=true), got "
        "'request { value: \"x\" } id: \"a\"'; the client must open the stream with "
        "{handshake: {sot: true}}"
    )
    # A protocol error ends only that stream: the server still serves.
    stream = _open_map(map_stub)
    stream.send(_req("ok", b"x"))
    assert stream.recv().id == "ok"
    stream.close()


def test_second_handshake_is_refused(map_stub: map_pb2_grpc.MapStub) -> None:
    stream = _open_map(map_stub)
    stream.send(MapReq(handshake=map_pb2.Handshake(sot=True)))
    with pytest.raises(grpc.RpcError) as err:
        stream.recv()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "MapFn: got a second handshake after the stream was opened"


def test_thread_pool_workers_answer_every_id_once(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, "map", env={"NFBUILDER_MAP_WORKERS": "3"}) as server:
        stream = _open_map(map_pb2_grpc.MapStub(server.channel()))
        ids = [str(i) for i in range(100)]
        stream.send(*(_req(i, i.encode()) for i in ids))
        responses = stream.recv_n(100)
        assert sorted(r.id for r in responses) == sorted(ids)
        assert all(r.results[0].value == r.id.encode() for r in responses)
        stream.send(_req("f", b"fail"))  # errors still take the contract's path
        with pytest.raises(grpc.RpcError) as err:
            stream.recv()
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert err.value.details() == "UDF_EXECUTION_ERROR(udf): ValueError('boom')"
        assert server.wait_exit()[0] == 1


def test_ordered_map_answers_in_arrival_order(tmp_path: Path) -> None:
    env = {"NFBUILDER_MAP_WORKERS": "4"}  # ordered wins over the pool
    with ServerProcess(tmp_path, "map", "--ordered", env=env) as server:
        stream = _open_map(map_pb2_grpc.MapStub(server.channel()))
        ids = [str(i) for i in range(50)]
        stream.send(*(_req(i, i.encode()) for i in ids))
        assert [r.id for r in stream.recv_n(50)] == ids
        stream.close()


# --- source transformer ---------------------------------------------------------------


@pytest.fixture(scope="module")
def transformer_stub(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[sourcetransform_pb2_grpc.SourceTransformStub]:
    with ServerProcess(tmp_path_factory.mktemp("tr"), "sourcetransformer") as server:
        yield sourcetransform_pb2_grpc.SourceTransformStub(server.channel())


def _open_transformer(stub: sourcetransform_pb2_grpc.SourceTransformStub) -> Duplex:
    stream = Duplex(stub.SourceTransformFn)
    stream.send(TrReq(handshake=sourcetransform_pb2.Handshake(sot=True)))
    assert stream.recv().handshake.sot
    return stream


def _tr(ident: str, value: bytes, seconds: int = 9) -> TrReq:
    return TrReq(
        request=TrReq.Request(
            id=ident, value=value, event_time=timestamp_pb2.Timestamp(seconds=seconds)
        )
    )


def test_transformer_echoes_request_id_and_keeps_event_time(
    transformer_stub: sourcetransform_pb2_grpc.SourceTransformStub,
) -> None:
    assert transformer_stub.IsReady(empty_pb2.Empty()).ready
    stream = _open_transformer(transformer_stub)
    ids = [f"b2Zm{i}-0" for i in range(50)]
    stream.send(*(_tr(i, b"x", seconds=n) for n, i in enumerate(ids)))
    responses = stream.recv_n(50)
    assert sorted(r.id for r in responses) == sorted(ids)
    for r in responses:
        (result,) = r.results
        assert result.HasField("event_time")
        assert result.event_time.seconds == ids.index(r.id)
    stream.close()


def test_transformer_sets_event_time_and_never_sends_empty_results(
    transformer_stub: sourcetransform_pb2_grpc.SourceTransformStub,
) -> None:
    stream = _open_transformer(transformer_stub)
    stream.send(_tr("et", b"et"))
    (result,) = stream.recv().results
    assert (result.event_time.seconds, result.event_time.nanos) == (1_700_000_000, 123_456_789)
    stream.send(_tr("none", b"none"))
    response = stream.recv()
    assert response.id == "none"
    (result,) = response.results
    assert list(result.tags) == [DROP] and result.event_time.seconds == 9
    stream.send(_tr("two", b"two"))
    assert all(r.event_time.seconds == 9 for r in stream.recv().results)
    stream.close()


def test_transformer_first_request_must_be_a_handshake(
    transformer_stub: sourcetransform_pb2_grpc.SourceTransformStub,
) -> None:
    stream = Duplex(transformer_stub.SourceTransformFn)
    stream.send(_tr("x", b"x"))
    with pytest.raises(grpc.RpcError) as err:
        stream.recv()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(
        "SourceTransformFn: the first request must be a handshake"
    )
