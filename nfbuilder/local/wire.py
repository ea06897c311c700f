"""The engine's map and sink requests, written in protobuf's wire format directly.

Building a ``MapRequest`` (two ``Timestamp`` messages, the request, the envelope) and then
serializing it costs the engine several microseconds per message and hop; the bytes are simple
enough to write at once. Only the requests the engine sends per message are written here (the
field numbers are ``proto/nfbuilder/proto/map.proto`` and ``sink.proto``'s, which follow the
Numaflow contract); everything else, and every response, goes through the generated classes.
The tests parse what this writes with them::

    raw = map_request("v-1-0", ("k",), b"x", event_time_ns=5, watermark_ns=None)
    map_pb2.MapRequest.FromString(raw).request.value      # b'x'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

_NS = 1_000_000_000
_U64 = 1 << 64


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [bytes((i,)) for i in range(0x80)]


def _field(tag: bytes, body: bytes) -> bytes:
    """A length-delimited field: its tag byte(s), the length, the bytes."""
    n = len(body)
    return tag + (_SMALL[n] if n < 0x80 else _varint(n)) + body


def _timestamp(tag: bytes, ns: int) -> bytes:
    # the outputs of one source message share its event time, and a batch its watermark:
    # most timestamps were written a moment ago
    found = _TIMESTAMPS.get((tag, ns))
    if found is not None:
        return found
    seconds, nanos = divmod(ns, _NS)  # nanos >= 0, as protobuf's Timestamp wants
    body = b""
    if seconds:
        body = b"\x08" + _varint(seconds + _U64 if seconds < 0 else seconds)
    if nanos:
        body += b"\x10" + _varint(nanos)
    if len(_TIMESTAMPS) >= 4096:
        _TIMESTAMPS.clear()
    found = _TIMESTAMPS[(tag, ns)] = _field(tag, body)
    return found


_TIMESTAMPS: dict[tuple[bytes, int], bytes] = {}


def _headers(tag: bytes, headers: Mapping[str, str]) -> bytes:
    return b"".join(_field(tag, _field(b"\x0a", k.encode()) + _field(b"\x12", v.encode()))
                    for k, v in headers.items())


def _body(keys: Sequence[str], value: bytes, event_time_ns: int,
          watermark_ns: int | None) -> bytes:
    """Fields 1-4, common to a map and a sink request: keys, value, event time, watermark."""
    out = b"".join([_field(b"\x0a", k.encode()) for k in keys]) if keys else b""
    if value:
        out += _field(b"\x12", value)
    out += _timestamp(b"\x1a", event_time_ns)
    if watermark_ns is not None:
        out += _timestamp(b"\x22", watermark_ns)
    return out


def map_request(id: str, keys: Sequence[str], value: bytes, event_time_ns: int,
                watermark_ns: int | None = None, headers: Mapping[str, str] | None = None,
                metadata: bytes | None = None) -> bytes:
    """A serialized ``map.v1.MapRequest`` data request; ``metadata``: a serialized
    ``metadata.Metadata`` (:func:`metadata_bytes`)."""
    body = _body(keys, value, event_time_ns, watermark_ns)
    if headers:
        body += _headers(b"\x2a", headers)
    if metadata:
        body += _field(b"\x32", metadata)
    return _field(b"\x0a", body) + (_field(b"\x12", id.encode()) if id else b"")


def sink_request(id: str, keys: Sequence[str], value: bytes, event_time_ns: int,
                 watermark_ns: int | None = None, headers: Mapping[str, str] | None = None,
                 metadata: bytes | None = None) -> bytes:
    """A serialized ``sink.v1.SinkRequest`` data request (id inside the request body)."""
    body = _body(keys, value, event_time_ns, watermark_ns)
    if id:
        body += _field(b"\x2a", id.encode())
    if headers:
        body += _headers(b"\x32", headers)
    if metadata:
        body += _field(b"\x3a", metadata)
    return _field(b"\x0a", body)


def encoded(request: Any) -> bytes:
    """A request serializer for a stream that is given both bytes (written here) and
    generated messages (the handshake, EOT)."""
    if type(request) is bytes:
        return request
    return request.SerializeToString()  # type: ignore[no-any-return]
