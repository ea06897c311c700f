"""The per-message fast paths of the vertex glue give what the general paths give: the map
answer from ``handler.payload`` (no Datum, no Results) and a single-pipeline sink writing the
encoded values as they came."""

from __future__ import annotations

import asyncio
import json
import pickle
from collections.abc import Sequence
from typing import Any

from nfbuilder._proto import map_pb2
from nfbuilder.loader import load_app
from nfbuilder.local.rpc import metadata_pb
from nfbuilder.local.wire import map_request
from nfbuilder.runtime.messages import Datum, SinkResult
from nfbuilder.runtime.servicers.convert import add_outputs, write_metadata
from nfbuilder.runtime.servicers.mapper import map_answer
from nfbuilder.runtime.vertex import build_program, map_handler, pipeline_metadata, sink_handler

WORD_COUNT = ["--in", "127.0.0.1:1", "--out", "127.0.0.1:2"]
T = 1_764_590_000_000_000_000


def _requests(values: list[bytes]) -> list[map_pb2.MapRequest]:
    meta = metadata_pb(pipeline_metadata(0)).SerializeToString()
    return [map_pb2.MapRequest.FromString(map_request(f"v-{i}-0", (), v, T + i, T, None, meta))
            for i, v in enumerate(values)]


def test_the_payload_answer_is_the_general_answer_byte_for_byte() -> None:
    loaded = load_app("apps/word_count.py", WORD_COUNT)
    program = build_program(loaded, "split-into-words", fuse=False, state_store=None)
    handler = map_handler(program)

    class PayloadOnly:  # the fast path must not come back through a Datum
        payload = staticmethod(handler.payload)  # type: ignore[attr-defined]
        payload_metadata = handler.payload_metadata  # type: ignore[attr-defined]

        def __call__(self, datum: object) -> None:
            raise AssertionError("the Datum path was taken")

    fast = map_answer(PayloadOnly())  # type: ignore[arg-type]
    general = map_answer(lambda datum: handler(datum))  # no ``payload``: through a Datum
    # words with keys, an empty line (no results), one the step fails on (a dead letter:
    # an int has no ``lower``)
    values = [pickle.dumps("The cat, the hat."), pickle.dumps(""), pickle.dumps(5)]
    for request in _requests(values):
        answer, expected = fast(request), general(request)
        assert answer.id == request.id
        assert _timeless(answer).SerializeToString() == _timeless(expected).SerializeToString()
    words = fast(_requests(values[:1])[0])
    assert [r.keys for r in words.results] == [["t"], ["c"], ["t"], ["h"]]
    assert all(r.metadata == write_metadata(pipeline_metadata(0)) for r in words.results)
    (dead,) = fast(_requests(values[2:])[0]).results
    assert list(dead.tags) == ["nfbuilder-dead-letter"]


def _timeless(response: map_pb2.MapResponse) -> map_pb2.MapResponse:
    """``response`` with its dead-letter records' ``time`` taken out (the rest compares)."""
    for result in response.results:
        if "nfbuilder-dead-letter" in result.tags:
            record = json.loads(result.value)
            del record["time"]
            result.value = json.dumps(record).encode()
    return response


def test_add_outputs_without_metadata_leaves_it_unset() -> None:
    response = map_pb2.MapResponse(id="a")
    add_outputs(response.results, [(b"x", ("k",), ("t",), None), (b"", (), (), 5)], None)
    assert response == map_pb2.MapResponse(id="a", results=[
        map_pb2.MapResponse.Result(value=b"x", keys=["k"], tags=["t"]),
        map_pb2.MapResponse.Result(value=b"")])
    assert not response.results[0].HasField("metadata")


class _Writer:
    """Takes chunks; chunk ``i`` is written unless ``i`` is in ``fail``."""

    def __init__(self, fail: set[int]) -> None:
        self.fail = fail
        self.chunks: list[bytes] = []

    async def write(self, chunks: Sequence[bytes]) -> list[bool]:
        self.chunks.extend(chunks)
        return [i not in self.fail for i in range(len(chunks))]


def _datum(ident: str, value: bytes) -> Datum:
    return Datum(ident, (), value, T, None, {}, pipeline_metadata(0))


def test_the_sink_writes_encoded_values_as_they_came_one_result_each() -> None:
    loaded = load_app("apps/word_count.py", WORD_COUNT)
    program = build_program(loaded, "sink", fuse=False, state_store=None)
    assert program.work(program.pipelines[0]).encoded

    def not_this_way(*args: Any) -> Any:
        raise AssertionError("an encoded single-pipeline sink writes without the step core")

    program.handle = not_this_way  # type: ignore[method-assign]
    writer = _Writer(fail={1})
    handle: Any = sink_handler(program, writer, "127.0.0.1:2")
    batch = [_datum("a", b"cat => 1\n"), _datum("b", b"hat => 2\n"), _datum("c", b"")]
    results = asyncio.run(handle(batch))
    assert writer.chunks == [b"cat => 1\n", b"hat => 2\n", b""]
    assert results == [SinkResult("a", True, ""),
                       SinkResult("b", False, "could not write to 127.0.0.1:2"),
                       SinkResult("c", True, "")]
    assert asyncio.run(handle([])) == []
