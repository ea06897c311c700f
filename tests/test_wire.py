"""The engine's hand-written map and sink requests parse, with the generated classes, into the
very messages the classes build (the oracle), for any keys, values, times and metadata."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from nfbuilder._proto import map_pb2, metadata_pb2, sink_pb2
from nfbuilder.local.rpc import (
    metadata_bytes,
    metadata_pb,
    request_fields,
    to_ns,
    user_metadata_of,
)
from nfbuilder.local.wire import encoded, map_request, sink_request

texts = st.text(max_size=20)
times = st.integers(min_value=-(2**62), max_value=2**62)
metas = st.dictionaries(texts, st.dictionaries(texts, st.binary(max_size=20), max_size=3),
                        max_size=3)
fields = st.tuples(texts, st.lists(texts, max_size=3).map(tuple), st.binary(max_size=300),
                   times, st.none() | times, st.dictionaries(texts, texts, max_size=3), metas)


@settings(max_examples=300, deadline=None)
@given(fields)
def test_a_map_request_parses_as_the_generated_one(f: tuple) -> None:
    id, keys, value, t, w, headers, meta = f
    raw = map_request(id, keys, value, t, w, headers, metadata_bytes(meta))
    want = map_pb2.MapRequest(id=id, request=map_pb2.MapRequest.Request(
        **request_fields(keys, value, t, w, headers, meta)))
    got = map_pb2.MapRequest.FromString(raw)
    assert got == want
    _same_as_given(got.request, keys, value, t, w, headers, meta)


@settings(max_examples=300, deadline=None)
@given(fields)
def test_a_sink_request_parses_as_the_generated_one(f: tuple) -> None:
    id, keys, value, t, w, headers, meta = f
    raw = sink_request(id, keys, value, t, w, headers, metadata_bytes(meta))
    want = sink_pb2.SinkRequest(request=sink_pb2.SinkRequest.Request(
        **request_fields(keys, value, t, w, headers, meta, id=id)))
    got = sink_pb2.SinkRequest.FromString(raw)
    assert got == want and got.request.id == id
    _same_as_given(got.request, keys, value, t, w, headers, meta)


def _same_as_given(request: Any, keys: tuple, value: bytes, t: int, w: int | None,
                   headers: dict, meta: dict) -> None:
    """The parsed request says what was given (not only what the generated classes make of
    the same inputs, which share the metadata helpers with the code under test)."""
    assert (tuple(request.keys), request.value, to_ns(request.event_time)) == (keys, value, t)
    assert (to_ns(request.watermark) if request.HasField("watermark") else None) == w
    assert dict(request.headers) == headers
    assert {g: dict(kv.key_value) for g, kv in request.metadata.user_metadata.items()} == meta


def test_metadata_from_the_wire_is_sent_as_it_came() -> None:
    result = map_pb2.MapResponse.Result(value=b"x", metadata=metadata_pb({"g": {"k": b"v"}}))
    shared = user_metadata_of(result)
    assert metadata_bytes(shared) == result.metadata.SerializeToString()
    assert metadata_pb2.Metadata.FromString(metadata_bytes(shared) or b"") == result.metadata
    assert metadata_bytes({}) is None and metadata_bytes(None) is None


def test_the_serializer_takes_bytes_and_messages() -> None:
    eot = map_pb2.MapRequest(status=map_pb2.TransmissionStatus(eot=True))
    assert encoded(b"raw") == b"raw" and encoded(eot) == eot.SerializeToString()
