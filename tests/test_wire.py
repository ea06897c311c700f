"""The engine's hand-written map, sink and transformer requests parse, with the generated
classes, into the very messages the classes build (the oracle), for any keys, values, times and
metadata; and its hand-read map responses read as the generated class reads them."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from nfbuilder._proto import map_pb2, metadata_pb2, sink_pb2, sourcetransform_pb2
from nfbuilder.local.rpc import (
    metadata_bytes,
    metadata_pb,
    request_fields,
    to_ns,
    user_metadata_of,
)
from nfbuilder.local.wire import (
    WireError,
    encoded,
    map_request,
    map_response,
    sink_request,
    transform_request,
)

texts = st.text(max_size=20)
times = st.integers(min_value=-(2**62), max_value=2**62)
metas = st.dictionaries(texts, st.dictionaries(texts, st.binary(max_size=20), max_size=3),
                        max_size=3)
fields = st.tuples(texts, st.lists(texts, max_size=3).map(tuple), st.binary(max_size=300),
                   times, st.none() | times, st.dictionaries(texts, texts, max_size=3), metas)


def _map(id: str, **fields: Any) -> Any:
    return map_pb2.MapRequest(id=id, request=map_pb2.MapRequest.Request(**fields))


def _sink(id: str, **fields: Any) -> Any:
    return sink_pb2.SinkRequest(request=sink_pb2.SinkRequest.Request(id=id, **fields))


def _transform(id: str, **fields: Any) -> Any:
    return sourcetransform_pb2.SourceTransformRequest(
        request=sourcetransform_pb2.SourceTransformRequest.Request(id=id, **fields))


#: each hand-written request, the generated class building the same one, and that class
KINDS = {"map": (map_request, _map, map_pb2.MapRequest),
         "sink": (sink_request, _sink, sink_pb2.SinkRequest),
         "transform": (transform_request, _transform, sourcetransform_pb2.SourceTransformRequest)}


@pytest.mark.parametrize("kind", sorted(KINDS))
@settings(max_examples=300, deadline=None)
@given(f=fields)
def test_a_request_parses_as_the_generated_one(kind: str, f: tuple) -> None:
    write, build, generated = KINDS[kind]
    id, keys, value, t, w, headers, meta = f
    raw = write(id, keys, value, t, w, headers, metadata_bytes(meta))
    got = generated.FromString(raw)
    assert got == build(id, **request_fields(keys, value, t, w, headers, meta))
    assert (got.id if kind == "map" else got.request.id) == id
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


# -- map responses, read by hand -------------------------------------------------------------
result_fields = st.tuples(st.lists(texts, max_size=3), st.binary(max_size=50),
                          st.lists(texts, max_size=3), st.none() | metas)
responses = st.builds(
    lambda id, results, hs, eot: map_pb2.MapResponse(
        id=id,
        results=[map_pb2.MapResponse.Result(
            keys=k, value=v, tags=t,
            **({} if m is None else {"metadata": metadata_pb(m)})) for k, v, t, m in results],
        **({} if hs is None else {"handshake": map_pb2.Handshake(sot=hs)}),
        **({} if eot is None else {"status": map_pb2.TransmissionStatus(eot=eot)})),
    texts, st.lists(result_fields, max_size=4), st.none() | st.booleans(),
    st.none() | st.booleans())


def _as_generated(raw: bytes) -> tuple[Any, ...]:
    """What the generated class reads from ``raw``, in the shape of a MapReply."""
    r = map_pb2.MapResponse.FromString(raw)
    results = [(x.value, tuple(x.keys), tuple(x.tags),
                {g: dict(kv.key_value) for g, kv in x.metadata.user_metadata.items()})
               for x in r.results]
    return (r.id, results, r.handshake.sot if r.HasField("handshake") else None,
            r.status.eot if r.HasField("status") else None)


def _as_read(raw: bytes) -> tuple[Any, ...]:
    reply = map_response(raw)
    results = [(x.value, x.keys, x.tags, {g: dict(kv) for g, kv in x.user_metadata.items()})
               for x in reply.results]
    return (reply.id, results, reply.handshake, reply.eot)


@settings(max_examples=300, deadline=None)
@given(responses, responses)
def test_a_map_response_reads_as_the_generated_class_reads_it(a: Any, b: Any) -> None:
    raw = a.SerializeToString()
    assert _as_read(raw) == _as_generated(raw)
    # two messages back to back are one message, merged: results appended, the last id kept,
    # handshake and status merged
    both = raw + b.SerializeToString()
    assert _as_read(both) == _as_generated(both)


# an unknown varint, fixed64, fixed32, LEN field and a group, and nack_options (field 5)
_UNKNOWN = (b"\x78\x01" b"\x81\x01" + b"\x00" * 8 + b"\x8d\x01" + b"\x00" * 4
            + b"\xfa\x01\x02hi" + b"\xf3\x01\x08\x01\xf4\x01")


def test_unknown_fields_are_skipped_at_every_level() -> None:
    result = map_pb2.MapResponse.Result(value=b"v", keys=["k"]).SerializeToString()
    result += _UNKNOWN + b"\x2a\x00"
    raw = _UNKNOWN + b"\x0a" + bytes([len(result)]) + result + b"\x12\x02id"
    assert _as_read(raw) == _as_generated(raw) == ("id", [(b"v", ("k",), (), {})], None, None)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=40) | responses.map(lambda r: r.SerializeToString()).flatmap(
    lambda raw: st.tuples(st.just(raw), st.integers(0, max(len(raw) - 1, 0)),
                          st.binary(max_size=3)).map(lambda t: t[0][:t[1]] + t[2])))
def test_bytes_that_are_not_a_map_response_are_refused_as_the_generated_class_refuses_them(
        raw: bytes) -> None:
    _reads_as_the_generated_class(raw)


def _reads_as_the_generated_class(raw: bytes) -> None:
    """``map_response`` refuses ``raw`` when the generated class does, else reads the same."""
    try:
        want = _as_generated(raw)
    except DecodeError:
        with pytest.raises(WireError):
            map_response(raw)
    else:
        assert _as_read(raw) == want


@pytest.mark.parametrize("raw", [
    b"\x0a\x03\x2a\x01\xff",  # a result's nack_options that does not parse
    b"\x0a\x05\x2a\x03\x08\x01\x00",  # ... and one with an unknown field that does
    b"\x1a\x02\x08\x80" + b"\x1a\x02\x08\x01",  # a handshake cut in its varint, then a good one
    b"\x1a\x02\x08\x01" + b"\x1a\x00",  # two handshakes: the second keeps the first's sot
    b"\x22\x0b\x08" + b"\x80" * 9 + b"\x02",  # a varint past 64 bits: its high bits dropped
    b"\x0a\x04\x22\x02\x1a\x00" + b"\x0a\x02\x22\x00",  # metadata in two results
    b"\x0a\x06\x22\x02\x1a\xff\x22\x00",  # a result's metadata twice, the first broken

    b"\xcd\x80\x80\x80\x10\x00\x00\x00\x00",  # a field number past 2**29 - 1 (hypothesis)
    b"\xf8\xff\xff\xff\x0f\x00",  # the largest field number there is
    b"\x0a\x09\xcd\x80\x80\x80\x10\x00\x00\x00\x00",  # ... in a result
])
def test_the_corner_cases_read_as_the_generated_class_reads_them(raw: bytes) -> None:
    _reads_as_the_generated_class(raw)
