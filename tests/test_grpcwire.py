"""The gRPC-over-HTTP/2 wire layer of the lean transport (framing, headers, trailers)."""

from __future__ import annotations

import pytest

from nfbuilder.runtime.grpcwire import (
    INTERNAL,
    RESOURCE_EXHAUSTED,
    UNIMPLEMENTED,
    GrpcWireError,
    MessageReader,
    frame_message,
    parse_timeout,
    request_headers,
    status_of,
    status_trailers,
)


def test_messages_split_across_any_cuts_come_out_whole() -> None:
    wire = b"".join(frame_message(m) for m in (b"", b"a", b"xyz" * 1000))
    for cut in (1, 2, 5, 6, 7, 100, len(wire)):
        reader = MessageReader(1 << 20)
        got: list[bytes] = []
        for i in range(0, len(wire), cut):
            got += reader.feed(wire[i:i + cut])
        assert got == [b"", b"a", b"xyz" * 1000] and reader.pending == 0


def test_compressed_and_oversized_messages_are_refused() -> None:
    with pytest.raises(GrpcWireError) as info:
        MessageReader(100).feed(b"\x01\x00\x00\x00\x01x")
    assert info.value.code == UNIMPLEMENTED
    with pytest.raises(GrpcWireError) as info:
        MessageReader(100).feed(b"\x00\x00\x00\x01\x00")
    assert info.value.code == RESOURCE_EXHAUSTED


def test_trailers_round_trip_with_percent_encoding_and_unpadded_details() -> None:
    trailers = status_trailers(INTERNAL, "UDF_EXECUTION_ERROR(udf): 100% bad\nline é", b"\x00\x01")
    assert (b"grpc-status-details-bin", b"AAE") in trailers
    assert status_of(trailers) == (INTERNAL, "UDF_EXECUTION_ERROR(udf): 100% bad\nline é",
                                   b"\x00\x01")
    assert status_trailers(0, headers_sent=False)[0] == (b":status", b"200")


def test_timeouts_and_request_headers() -> None:
    assert parse_timeout(b"100m") == pytest.approx(0.1) and parse_timeout(b"2S") == 2
    with pytest.raises(GrpcWireError):
        parse_timeout(b"10x")
    headers = dict(request_headers("/map.v1.Map/MapFn", timeout_s=1.5))
    assert headers[b":path"] == b"/map.v1.Map/MapFn" and headers[b"grpc-timeout"] == b"1500m"
    assert headers[b"te"] == b"trailers" and headers[b"content-type"] == b"application/grpc"


def test_a_big_message_in_many_small_pieces_is_joined_once() -> None:
    payload = bytes(range(256)) * 40_000  # 10 MB in 16 KiB pieces: linear, not quadratic
    wire = frame_message(payload) + frame_message(b"next")
    reader = MessageReader(64 << 20)
    got: list[bytes] = []
    for i in range(0, len(wire), 16384):
        got += reader.feed(wire[i:i + 16384])
        if 0 < i < len(payload) - 16384:  # under way: pieces kept apart, nothing re-joined yet
            assert reader._parts and reader._buf == b"", i
    assert got == [payload, b"next"] and reader.pending == 0
