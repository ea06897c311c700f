"""The sink's batch path: the hand-written SinkResponse bytes against the generated classes (the
oracle), the lazily read sink Datum against what the request says, the shared batch
choreography in process, and pipelined batches on both transports."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from protocol_harness import Duplex, ServerProcess

from nfbuilder._proto import sink_pb2, sink_pb2_grpc
from nfbuilder.local.rpc import metadata_bytes
from nfbuilder.local.wire import sink_request
from nfbuilder.runtime.messages import Datum, SinkResult
from nfbuilder.runtime.servicers.sink import _SinkDatum, results_bytes
from nfbuilder.runtime.stream import BidiStream, ErrorContract, StreamSpec

texts = st.text(max_size=20) | st.text(min_size=100, max_size=300)  # one- and two-byte lengths
results = st.lists(st.builds(SinkResult, texts, st.booleans(), texts), max_size=20)


@settings(max_examples=300, deadline=None)
@given(results)
def test_results_bytes_are_what_the_generated_classes_serialize(given: list[SinkResult]) -> None:
    Result = sink_pb2.SinkResponse.Result
    want = sink_pb2.SinkResponse(results=[
        Result(id=r.id, status=sink_pb2.SUCCESS) if r.ok
        else Result(id=r.id, status=sink_pb2.FAILURE, err_msg=r.err_msg)
        for r in given
    ])
    raw = results_bytes(given)
    assert sink_pb2.SinkResponse.FromString(raw) == want
    assert raw == want.SerializeToString()


times = st.integers(min_value=-(2**62), max_value=2**62)
metas = st.dictionaries(texts, st.dictionaries(texts, st.binary(max_size=20), max_size=3),
                        max_size=3)


@settings(max_examples=200, deadline=None)
@given(texts, st.lists(texts, max_size=3).map(tuple), st.binary(max_size=300), times,
       st.none() | times, st.dictionaries(texts, texts, max_size=3), metas)
def test_a_sink_datum_says_what_its_request_says(
    id: str, keys: tuple[str, ...], value: bytes, t: int, w: int | None,
    headers: dict[str, str], meta: dict[str, dict[str, bytes]],
) -> None:
    raw = sink_request(id, keys, value, t, w, headers, metadata_bytes(meta))
    datum = _SinkDatum(sink_pb2.SinkRequest.FromString(raw).request)
    assert isinstance(datum, Datum)
    assert (datum.id, datum.keys, datum.value, datum.event_time_ns, datum.watermark_ns) == (
        id, keys, value, t, w)
    assert dict(datum.headers) == headers
    assert {g: dict(kv) for g, kv in datum.user_metadata.items()} == meta


# --- the batch choreography, in process -----------------------------------------------------

Sink = sink_pb2.SinkRequest
HELLO = Sink(handshake=sink_pb2.Handshake(sot=True))
EOT = Sink(status=sink_pb2.TransmissionStatus(eot=True))


def _req(ident: str) -> sink_pb2.SinkRequest:
    return Sink(request=Sink.Request(id=ident, value=ident.encode()))


def _stream(answer: Any, fatal: list[str]) -> BidiStream[Any, Any]:
    errors = ErrorContract("udsink", lambda message, tb: fatal.append(message), "UDSinkError, ")
    return BidiStream.batches(StreamSpec("SinkFn", "hello"), answer, "eot", errors)


def test_batches_are_answered_in_order_then_their_eot() -> None:
    seen: list[list[str]] = []

    async def answer(batch: Sequence[sink_pb2.SinkRequest]) -> list[str]:
        seen.append([r.request.id for r in batch])
        await asyncio.sleep(0)  # awaited once per batch, whatever its size
        return [f"answer {len(seen)}"]

    async def run() -> list[Any]:
        call = _stream(answer, [])
        batches = call.batched()
        assert batches is not None and call.answers_inline
        out: list[Any] = []
        assert batches.feed([HELLO, _req("a"), _req("b"), EOT, EOT], out) is None
        assert batches.feed([_req("c")], out) is None
        assert batches.feed([EOT], out) is None
        assert len(batches.ready) == 3
        while batches.ready:
            responses, failure = await batches.answer()
            assert failure is None
            out.extend(responses)
        return out

    out = asyncio.run(run())
    # the empty batch is answered with its EOT only, without a handler call
    assert out == ["hello", "answer 1", "eot", "eot", "answer 2", "eot"]
    assert seen == [["a", "b"], ["c"]]


def test_batch_protocol_and_handler_errors_end_the_call() -> None:
    async def boom(batch: Sequence[Any]) -> list[str]:
        raise OSError("disk on fire")

    fatal: list[str] = []
    stream = _stream(boom, fatal)
    batches = stream.batched()
    assert batches is not None
    out: list[Any] = []
    refused = batches.feed([_req("a")], out)
    assert refused is not None and refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.message.startswith("SinkFn: the first request must be a handshake")

    batches = stream.batched()
    assert batches is not None
    second = batches.feed([HELLO, _req("a"), HELLO], out)
    assert second is not None and second.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "second handshake" in second.message

    batches = stream.batched()
    assert batches is not None
    assert batches.feed([HELLO, _req("a"), EOT], out) is None
    responses, failure = asyncio.run(batches.answer())
    assert responses == [] and failure is not None
    assert failure.code == grpc.StatusCode.INTERNAL
    assert failure.message == "UDF_EXECUTION_ERROR(udsink): UDSinkError, OSError('disk on fire')"
    assert fatal == [failure.message]


def test_a_batch_the_client_did_not_close_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    async def never(batch: Sequence[Any]) -> list[str]:
        raise AssertionError("an unclosed batch must not be written")

    batches = _stream(never, []).batched()
    assert batches is not None
    assert batches.feed([HELLO, _req("a"), _req("b")], []) is None
    with caplog.at_level(logging.WARNING, logger="nfbuilder.runtime"):
        batches.end()
    assert not batches.ready
    assert "stream ended with 2 requests after the last EOT; not processed" in caplog.text


# --- on both transports ---------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["grpc", "h2"])
def test_pipelined_batches_then_half_close(tmp_path: Path, transport: str) -> None:
    """Batches sent before the first is answered (two of 3 MiB: over the stream window and
    the server's high water) are answered in order, each then its EOT; the client's
    half-close right after them ends the call OK once they are answered."""
    big = [(f"big{i}", bytes([65 + i]) * (3 << 20)) for i in range(2)]
    with ServerProcess(tmp_path, "sink", env={"NFBUILDER_TRANSPORT": transport}) as server:
        stream = Duplex(sink_pb2_grpc.SinkStub(server.channel()).SinkFn, timeout_s=30)
        stream.send(HELLO, _req("a"), Sink(request=Sink.Request(id="b", value=b"bad")), EOT,
                    *(Sink(request=Sink.Request(id=i, value=v)) for i, v in big), EOT, EOT,
                    _req("unclosed"))
        stream.close()
        replies = list(stream.call)
        assert replies[0].HasField("handshake")
        shapes = [[(r.id, r.status) for r in reply.results] if reply.results else "EOT"
                  for reply in replies[1:]]
        assert shapes == [
            [("a", sink_pb2.SUCCESS), ("b", sink_pb2.FAILURE)], "EOT",
            [("big0", sink_pb2.SUCCESS), ("big1", sink_pb2.SUCCESS)], "EOT",
            "EOT",
        ]
        assert stream.call.code() == grpc.StatusCode.OK
        assert (server.marks / "sunk").read_bytes() == b"a\n" + b"".join(v + b"\n" for _, v in big)


def test_h2_holds_the_window_while_a_slow_batch_is_answered(tmp_path: Path) -> None:
    """A client running ahead of a batch being written gets its window back only up to
    QUEUE_HIGH_WATER; the rest once the batch is answered (then everything is answered)."""
    from nfbuilder.runtime.h2server import QUEUE_HIGH_WATER, H2Server, methods_of
    from nfbuilder.runtime.servicers.sink import SinkServicer, add_to_server

    async def run() -> None:
        started, release = asyncio.Event(), asyncio.Event()

        async def slow(batch: Sequence[Datum]) -> list[SinkResult]:
            started.set()
            await release.wait()
            return [SinkResult(d.id, True) for d in batch]

        servicer = SinkServicer(slow, ErrorContract("udsink", lambda m, tb: None))
        server = H2Server(methods_of(add_to_server, servicer), max_message_bytes=64 << 20)
        path = str(tmp_path / "sink.sock")
        await server.start(path)
        async with grpc.aio.insecure_channel(f"unix://{path}") as channel:
            call = channel.stream_stream("/sink.v1.Sink/SinkFn",
                                         request_serializer=Sink.SerializeToString,
                                         response_deserializer=sink_pb2.SinkResponse.FromString)()
            for request in (HELLO, _req("a"), EOT):
                await call.write(request)
            await asyncio.wait_for(started.wait(), 10)
            chunk = QUEUE_HIGH_WATER // 4

            async def run_ahead() -> None:
                for i in range(8):  # twice the high water, while "a" is being written
                    await call.write(Sink(request=Sink.Request(id=f"b{i}", value=b"x" * chunk)))
                await call.write(EOT)
                await call.done_writing()

            writer = asyncio.ensure_future(run_ahead())
            (connection,) = server.connections
            (h2call,) = connection._calls.values()
            for _ in range(500):
                if h2call.owed:
                    break
                await asyncio.sleep(0.01)
            assert h2call.owed and h2call.held > QUEUE_HIGH_WATER
            release.set()
            replies = [reply async for reply in call]
            await writer
            assert [[r.id for r in reply.results] if reply.results else "EOT"
                    for reply in replies[1:]] == [["a"], "EOT", [f"b{i}" for i in range(8)], "EOT"]
            assert await call.code() == grpc.StatusCode.OK
        await server.stop(1.0)

    asyncio.run(run())


def test_h2_gives_back_what_it_held_when_a_batch_call_is_cancelled(tmp_path: Path) -> None:
    """A client that runs ahead of a slow batch and then cancels the call: the bytes the
    server held back are handed to the connection's window again, so after many such calls
    a new one on the same connection is still answered (without that, the window runs dry
    after about six and the next call cannot even send its handshake)."""
    import grpc
    import grpc.aio

    from nfbuilder.runtime.h2server import QUEUE_HIGH_WATER, H2Server, methods_of
    from nfbuilder.runtime.servicers.sink import SinkServicer, add_to_server

    sink = sink_pb2.SinkRequest
    hello = sink(handshake=sink_pb2.Handshake(sot=True))
    eot = sink(status=sink_pb2.TransmissionStatus(eot=True))

    async def main() -> None:
        unblocked = asyncio.Event()
        started = asyncio.Event()

        async def slow(batch: list[Any]) -> list[SinkResult]:
            started.set()
            await unblocked.wait()
            return [SinkResult(d.id, True) for d in batch]

        server = H2Server(methods_of(add_to_server, SinkServicer(
            slow, ErrorContract("udsink", lambda m, t: None))), max_message_bytes=64 << 20)
        path = str(tmp_path / "s.sock")
        await server.start(path)
        try:
            async with grpc.aio.insecure_channel(f"unix://{path}") as channel:
                def open_call() -> Any:
                    return channel.stream_stream(
                        "/sink.v1.Sink/SinkFn", request_serializer=sink.SerializeToString,
                        response_deserializer=sink_pb2.SinkResponse.FromString)()

                for _ in range(10):
                    started.clear()
                    call = open_call()
                    for r in (hello, sink(request=sink.Request(id="a", value=b"x")), eot):
                        await call.write(r)
                    await asyncio.wait_for(started.wait(), 10)

                    async def ahead(call: Any = call) -> None:
                        for i in range(8):
                            await call.write(sink(request=sink.Request(
                                id=f"b{i}", value=b"x" * (QUEUE_HIGH_WATER // 4))))

                    writer = asyncio.ensure_future(ahead())
                    (connection,) = server.connections
                    for _ in range(300):  # until the server holds bytes back
                        calls = list(connection._calls.values())
                        if calls and calls[0].owed > 1_000_000:
                            break
                        await asyncio.sleep(0.01)
                    call.cancel()
                    writer.cancel()
                    await asyncio.gather(writer, return_exceptions=True)
                    await asyncio.sleep(0.1)
                unblocked.set()
                call = open_call()

                async def fresh() -> list[Any]:
                    for r in (hello, sink(request=sink.Request(id="z", value=b"y" * (2 << 20))),
                              eot):
                        await call.write(r)
                    await call.done_writing()
                    return [x async for x in call]

                got = await asyncio.wait_for(fresh(), 10)
                assert [r.id for x in got for r in x.results] == ["z"]
        finally:
            await server.stop(1.0)

    asyncio.run(asyncio.wait_for(main(), 60))  # a leak makes the last call hang
