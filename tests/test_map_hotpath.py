"""The map vertex's per-message path: frozen metadata, in-place wire results, the inline stream.

These pieces exist to make each message cheaper; the tests check that they say and send exactly
what the slower, obvious code did.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

from nfbuilder._proto import map_pb2, map_pb2_grpc, metadata_pb2
from nfbuilder.loader import load_app
from nfbuilder.runtime.messages import Datum, FrozenMetadata, Result
from nfbuilder.runtime.servicers.convert import add_map_results, write_metadata
from nfbuilder.runtime.stream import BidiStream, ErrorContract, StreamSpec
from nfbuilder.runtime.vertex import build_program, map_handler, pipeline_metadata, pipeline_of

MapReq = map_pb2.MapRequest
Wire = map_pb2.MapResponse.Result
BENCH_ARGS = ["--in", "127.0.0.1:7000", "--out", "127.0.0.1:7001"]


# ---------------------------------------------------------------- FrozenMetadata


def test_frozen_metadata_is_a_read_only_copy() -> None:
    inner = {"pipeline": b"0"}
    source = {"nfbuilder": inner}
    meta = FrozenMetadata(source)
    inner["pipeline"] = b"9"  # changing what it was built from does not change it
    source["other"] = {}
    assert meta == {"nfbuilder": {"pipeline": b"0"}}
    assert {"nfbuilder": {"pipeline": b"0"}} == meta  # noqa: SIM300 - dict on the left on purpose
    assert meta != {"nfbuilder": {"pipeline": b"9"}}
    assert list(meta) == ["nfbuilder"] and len(meta) == 1
    with pytest.raises(TypeError):
        meta["nfbuilder"]["pipeline"] = b"1"  # type: ignore[index]
    with pytest.raises(TypeError):
        meta["x"] = {}  # type: ignore[index]


def test_frozen_metadata_hashes_by_content() -> None:
    a = FrozenMetadata({"g": {"k": b"v"}})
    assert hash(a) == hash(FrozenMetadata({"g": {"k": b"v"}}))
    assert a == FrozenMetadata({"g": {"k": b"v"}})
    assert a != FrozenMetadata({"g": {"k": b"w"}})
    assert repr(a) == "FrozenMetadata({'g': {'k': b'v'}})"


# ---------------------------------------------------------------- wire conversion


def test_write_metadata_reuses_the_wire_form_of_frozen_metadata() -> None:
    meta = FrozenMetadata({"g": {"k": b"v"}})
    first = write_metadata(meta)
    assert first is write_metadata(FrozenMetadata({"g": {"k": b"v"}}))  # built once
    assert first == metadata_pb2.Metadata(
        user_metadata={"g": metadata_pb2.KeyValueGroup(key_value={"k": b"v"})}
    )
    assert write_metadata(FrozenMetadata({})) is None


def test_write_metadata_of_a_plain_dict_follows_its_changes() -> None:
    plain = {"g": {"k": b"v"}}
    assert write_metadata(plain) == write_metadata(FrozenMetadata(plain))
    plain["g"]["k"] = b"changed"  # a handler may reuse and change its dict between messages
    wire = write_metadata(plain)
    assert wire is not None and wire.user_metadata["g"].key_value["k"] == b"changed"


@pytest.mark.parametrize(
    "results",
    [
        [],
        [Result(b"")],
        [Result(b"v", keys=("a", "b"), tags=("t",), user_metadata={"g": {"k": b"1"}})],
        [Result(b"x", user_metadata=FrozenMetadata({"g": {"k": b"2"}})), Result.drop()],
    ],
    ids=["none", "empty-value", "every-field", "frozen-and-drop"],
)
def test_add_map_results_sends_what_the_constructor_would(results: list[Result]) -> None:
    expected = map_pb2.MapResponse(
        id="v-1-0",
        results=[
            Wire(keys=r.keys, value=r.value, tags=r.tags, metadata=write_metadata(r.user_metadata))
            for r in results
        ],
    )
    response = map_pb2.MapResponse(id="v-1-0")
    add_map_results(response.results, results)
    assert response == expected
    assert response.SerializeToString(deterministic=True) == expected.SerializeToString(
        deterministic=True
    )


def test_shared_wire_metadata_is_copied_not_linked() -> None:
    meta = FrozenMetadata({"g": {"k": b"v"}})
    response = map_pb2.MapResponse(id="a")
    add_map_results(response.results, [Result(b"x", user_metadata=meta)])
    response.results[0].metadata.user_metadata["g"].key_value["k"] = b"changed"
    cached = write_metadata(meta)
    assert cached is not None and cached.user_metadata["g"].key_value["k"] == b"v"


# ---------------------------------------------------------------- vertex glue


def test_pipeline_metadata_is_frozen_shared_and_readable() -> None:
    meta = pipeline_metadata(3)
    assert isinstance(meta, FrozenMetadata)
    assert meta is pipeline_metadata(3)
    assert meta == {"nfbuilder": {"pipeline": b"3"}}
    assert pipeline_of(meta) == 3
    assert pipeline_of({}) is None


def test_single_pipeline_map_handler_stamps_the_pipeline() -> None:
    loaded = load_app("bench.identity_app", BENCH_ARGS)
    program = build_program(loaded, "identity", fuse=False, state_store=None)
    handle = map_handler(program)
    (result,) = handle(Datum("v-1-0", (), b"payload", 0, None, {}, {}))
    assert result.value == b"payload" and result.keys == () and result.tags == ()
    assert result.user_metadata == {"nfbuilder": {"pipeline": b"0"}}


# ---------------------------------------------------------------- BidiStream.one_to_one


def test_bidi_stream_needs_exactly_one_body() -> None:
    spec = StreamSpec("MapFn", map_pb2.MapResponse())
    errors = ErrorContract("udf", lambda message, tb: None)
    message = "BidiStream needs exactly one of process, answer, answers and batch"
    with pytest.raises(TypeError, match=message):
        BidiStream[MapReq, map_pb2.MapResponse](spec, None, errors)

    async def process(requests: AsyncIterator[MapReq]) -> AsyncIterator[map_pb2.MapResponse]:
        yield map_pb2.MapResponse()

    with pytest.raises(TypeError, match=message):
        BidiStream(spec, process, errors, answer=lambda r: r)


def _handshake() -> MapReq:
    return MapReq(handshake=map_pb2.Handshake(sot=True))


def _data(ident: str, value: bytes) -> MapReq:
    return MapReq(id=ident, request=MapReq.Request(value=value))


def _answer(request: MapReq) -> map_pb2.MapResponse:
    if request.request.value == b"boom":
        raise ValueError("boom from the handler")
    return map_pb2.MapResponse(id=request.id, results=[Wire(value=request.request.value)])


async def _exchange(
    sock: Path, requests: list[MapReq], fatal: list[str]
) -> tuple[list[map_pb2.MapResponse], grpc.aio.AioRpcError | None]:
    """Serve a one_to_one MapFn on ``sock``, send ``requests``, return what came back."""
    servicer = map_pb2_grpc.MapServicer()
    errors = ErrorContract("udf", lambda message, tb: fatal.append(message))
    spec = StreamSpec("MapFn", map_pb2.MapResponse(handshake=map_pb2.Handshake(sot=True)))
    servicer.MapFn = BidiStream.one_to_one(spec, _answer, errors).handle  # type: ignore[method-assign]
    server = grpc.aio.server()
    map_pb2_grpc.add_MapServicer_to_server(servicer, server)
    server.add_insecure_port(f"unix://{sock}")
    await server.start()
    received: list[map_pb2.MapResponse] = []
    error = None
    try:
        async with grpc.aio.insecure_channel(f"unix://{sock}") as channel:
            call = map_pb2_grpc.MapStub(channel).MapFn(iter(requests))
            try:
                async for response in call:
                    received.append(response)
            except grpc.aio.AioRpcError as exc:
                error = exc
    finally:
        await server.stop(None)
    return received, error


def test_one_to_one_answers_each_request_in_order(tmp_path: Path) -> None:
    requests = [_handshake(), *(_data(f"v-{i}-0", f"m{i}".encode()) for i in range(50))]
    received, error = asyncio.run(_exchange(tmp_path / "map.sock", requests, []))
    assert error is None
    assert received[0].handshake.sot and not received[0].id
    assert [(r.id, r.results[0].value) for r in received[1:]] == [
        (f"v-{i}-0", f"m{i}".encode()) for i in range(50)
    ]


def test_one_to_one_refuses_a_second_handshake(tmp_path: Path) -> None:
    fatal: list[str] = []
    requests = [_handshake(), _data("a", b"x"), _handshake(), _data("b", b"y")]
    received, error = asyncio.run(_exchange(tmp_path / "map.sock", requests, fatal))
    assert [r.id for r in received] == ["", "a"]
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "MapFn: got a second handshake after the stream was opened"
    assert fatal == []  # a client's mistake does not stop the server


def test_one_to_one_handler_error_takes_the_fatal_path(tmp_path: Path) -> None:
    fatal: list[str] = []
    requests = [_handshake(), _data("a", b"x"), _data("b", b"boom"), _data("c", b"z")]
    received, error = asyncio.run(_exchange(tmp_path / "map.sock", requests, fatal))
    assert [r.id for r in received] == ["", "a"]
    assert error is not None and error.code() == grpc.StatusCode.INTERNAL
    assert "boom from the handler" in (error.details() or "")
    assert len(fatal) == 1 and "boom from the handler" in fatal[0]
