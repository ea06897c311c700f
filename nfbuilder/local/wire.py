"""The engine's map and sink requests, and the map responses, in protobuf's wire format
directly.

Building a ``MapRequest`` (two ``Timestamp`` messages, the request, the envelope) and then
serializing it costs the engine several microseconds per message and hop, and so does reading a
``MapResponse`` into the generated classes and then into :class:`Result`; the bytes are simple
enough to write and read at once. Only the messages the engine sends and reads per message are
done here (the field numbers are ``proto/nfbuilder/proto/map.proto`` and ``sink.proto``'s,
which follow the Numaflow contract); everything else goes through the generated classes. The
tests check both ways against them::

    raw = map_request("v-1-0", ("k",), b"x", event_time_ns=5, watermark_ns=None)
    map_pb2.MapRequest.FromString(raw).request.value      # b'x'
    map_response(map_pb2.MapResponse(id="v-1-0").SerializeToString()).id   # 'v-1-0'
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

from google.protobuf.message import DecodeError

from nfbuilder._proto import metadata_pb2, nack_options_pb2
from nfbuilder.local.rpc import UserMetadata, user_metadata_from
from nfbuilder.runtime.protowire import field, varint

_NS = 1_000_000_000
_U64 = 1 << 64
_MASK64 = _U64 - 1
_MAX_FIELD = (1 << 29) - 1  # protobuf's largest field number


def _timestamp(tag: bytes, ns: int) -> bytes:
    # the outputs of one source message share its event time, and a batch its watermark:
    # most timestamps were written a moment ago
    found = _TIMESTAMPS.get((tag, ns))
    if found is not None:
        return found
    seconds, nanos = divmod(ns, _NS)  # nanos >= 0, as protobuf's Timestamp wants
    body = b""
    if seconds:
        body = b"\x08" + varint(seconds + _U64 if seconds < 0 else seconds)
    if nanos:
        body += b"\x10" + varint(nanos)
    if len(_TIMESTAMPS) >= 4096:
        _TIMESTAMPS.clear()
    found = _TIMESTAMPS[(tag, ns)] = field(tag, body)
    return found


_TIMESTAMPS: dict[tuple[bytes, int], bytes] = {}


def _headers(tag: bytes, headers: Mapping[str, str]) -> bytes:
    return b"".join(field(tag, field(b"\x0a", k.encode()) + field(b"\x12", v.encode()))
                    for k, v in headers.items())


def _times(event_time_ns: int, watermark_ns: int | None) -> bytes:
    """Fields 3 and 4, common to a map and a sink request: event time, watermark."""
    out = _timestamp(b"\x1a", event_time_ns)
    if watermark_ns is not None:
        out += _timestamp(b"\x22", watermark_ns)
    return out


#: what follows the value in a map request without headers, by (event time, watermark,
#: metadata): the outputs of one message, and the messages of one batch, mostly share it
_MAP_TAILS: dict[tuple[int, int | None, bytes | None], bytes] = {}


def _keys_and_value(keys: Sequence[str], value: bytes, tail: bytes) -> bytes:
    """Fields 1 and 2 (keys, value), then ``tail``."""
    parts: list[bytes] = []
    for k in keys:
        kb = k.encode()
        parts += (b"\x0a", varint(len(kb)), kb)
    if value:
        parts += (b"\x12", varint(len(value)), value)
    parts.append(tail)
    return b"".join(parts)


def map_request(id: str, keys: Sequence[str], value: bytes, event_time_ns: int,
                watermark_ns: int | None = None, headers: Mapping[str, str] | None = None,
                metadata: bytes | None = None) -> bytes:
    """A serialized ``map.v1.MapRequest`` data request; ``metadata``: a serialized
    ``metadata.Metadata`` (:func:`metadata_bytes`)."""
    if headers:
        tail = _times(event_time_ns, watermark_ns) + _headers(b"\x2a", headers)
        if metadata:
            tail += field(b"\x32", metadata)
    else:
        key = (event_time_ns, watermark_ns, metadata)
        cached = _MAP_TAILS.get(key)
        if cached is None:
            if len(_MAP_TAILS) >= 4096:  # bounded: a long run sees many event times
                _MAP_TAILS.clear()
            cached = _MAP_TAILS[key] = (_times(event_time_ns, watermark_ns)
                                        + (field(b"\x32", metadata) if metadata else b""))
        tail = cached
    body = _keys_and_value(keys, value, tail)
    if not id:
        return field(b"\x0a", body)
    idb = id.encode()
    return b"".join((b"\x0a", varint(len(body)), body, b"\x12", varint(len(idb)), idb))


def sink_request(id: str, keys: Sequence[str], value: bytes, event_time_ns: int,
                 watermark_ns: int | None = None, headers: Mapping[str, str] | None = None,
                 metadata: bytes | None = None) -> bytes:
    """A serialized ``sink.v1.SinkRequest`` data request (id inside the request body)."""
    tail = _times(event_time_ns, watermark_ns)
    if id:
        tail += field(b"\x2a", id.encode())
    if headers:
        tail += _headers(b"\x32", headers)
    if metadata:
        tail += field(b"\x3a", metadata)
    body = _keys_and_value(keys, value, tail)
    return field(b"\x0a", body)


def transform_request(id: str, keys: Sequence[str], value: bytes, event_time_ns: int,
                      watermark_ns: int | None = None,
                      headers: Mapping[str, str] | None = None,
                      metadata: bytes | None = None) -> bytes:
    """A serialized ``sourcetransformer.v1.SourceTransformRequest`` data request (id inside the
    request body, after the headers)."""
    tail = _times(event_time_ns, watermark_ns)
    if headers:
        tail += _headers(b"\x2a", headers)
    if id:
        tail += field(b"\x32", id.encode())
    if metadata:
        tail += field(b"\x3a", metadata)
    body = _keys_and_value(keys, value, tail)
    return field(b"\x0a", body)


def encoded(request: Any) -> bytes:
    """A request serializer for a stream that is given both bytes (written here) and
    generated messages (the handshake, EOT)."""
    if type(request) is bytes:
        return request
    return request.SerializeToString()  # type: ignore[no-any-return]


# -- reading map responses ---------------------------------------------------------------------
#: the user metadata of a result without any (shared, read-only)
NO_METADATA: UserMetadata = MappingProxyType({})


class Result(NamedTuple):
    """One map output message (event time and headers are inherited from the parent)."""

    value: bytes
    keys: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    user_metadata: UserMetadata = NO_METADATA


class MapReply(NamedTuple):
    """A ``map.v1.MapResponse`` as the engine reads it: ``handshake`` and ``eot`` are None
    when the message has no ``handshake`` / ``status``, else their ``sot`` / ``eot``."""

    id: str
    results: list[Result]
    handshake: bool | None = None
    eot: bool | None = None


_new = tuple.__new__


class WireError(ValueError):
    """Bytes that are not a valid message of the expected type."""


def _varint_at(buf: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & _MASK64, pos  # bits past the 64th are dropped, as protobuf does
        shift += 7
        if shift >= 64:
            raise WireError("a varint longer than 10 bytes")


def _skip(buf: bytes, pos: int, tag: int) -> int:
    """Past the value at ``pos`` of an unknown field with ``tag`` (a group to its end tag)."""
    wire_type = tag & 7
    if tag < 8 or tag >> 3 > _MAX_FIELD:
        raise WireError(f"field number {tag >> 3} (valid: 1 to {_MAX_FIELD})")
    if wire_type == 0:
        return _varint_at(buf, pos)[1]
    if wire_type == 1:
        return pos + 8
    if wire_type == 5:
        return pos + 4
    if wire_type == 2:
        n, pos = _varint_at(buf, pos)
        return pos + n
    if wire_type == 3:
        while True:
            inner, pos = _varint_at(buf, pos)
            if inner & 7 == 4:
                if inner >> 3 != tag >> 3:
                    raise WireError("a group ends with another field's end tag")
                return pos
            pos = _skip(buf, pos, inner)
    raise WireError(f"wire type {wire_type}")


def _flag(buf: bytes, pos: int, end: int, was: bool | None) -> bool:
    """Field 1 (a bool) of a ``Handshake`` / ``TransmissionStatus`` in ``buf[pos:end]``, merged
    into an earlier copy's value ``was`` (None: none yet): the field is kept unless this copy
    sets it again."""
    flag = bool(was)
    while pos < end:
        tag, pos = _varint_at(buf, pos)
        if tag == 0x08:
            n, pos = _varint_at(buf, pos)
            flag = n != 0
        else:
            pos = _skip(buf, pos, tag)
    if pos != end:
        raise WireError("a field runs past the end of its message")
    return flag


#: the tags of length-delimited fields 1 to 4 (a response's), and 1 to 5 (a result's)
_RESPONSE_TAGS = frozenset((0x0A, 0x12, 0x1A, 0x22))
_RESULT_TAGS = frozenset((0x0A, 0x12, 0x1A, 0x22, 0x2A))


def _fields(buf: bytes, pos: int, end: int,
            tags: frozenset[int]) -> Iterator[tuple[int, int, int]]:
    """``(tag, start, stop)`` of each length-delimited field with one of ``tags`` in
    ``buf[pos:end]``; every other field is skipped."""
    while pos < end:
        tag = buf[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = _varint_at(buf, pos)
        if tag not in tags:
            pos = _skip(buf, pos, tag)
            continue
        n = buf[pos]
        if n < 0x80:
            pos += 1
        else:
            n, pos = _varint_at(buf, pos)
        if pos + n > end:
            raise WireError("a field runs past the end of its message")
        yield tag, pos, pos + n
        pos += n
    if pos != end:  # a skipped field ran past it
        raise WireError("a field runs past the end of its message")


def _result(buf: bytes, pos: int, end: int) -> Result:
    """A ``MapResponse.Result`` in ``buf[pos:end]``: keys (1), value (2), tags (3), metadata
    (4); nack_options (5) is only checked."""
    keys: list[str] = []
    tags: list[str] = []
    value = b""
    metadata: list[bytes] = []
    for tag, start, stop in _fields(buf, pos, end, _RESULT_TAGS):
        if tag == 0x12:
            value = buf[start:stop]
        elif tag == 0x0A:
            keys.append(buf[start:stop].decode())
        elif tag == 0x1A:
            tags.append(buf[start:stop].decode())
        elif tag == 0x22:
            metadata.append(buf[start:stop])
        else:
            nack_options_pb2.NackOptions.FromString(buf[start:stop])
    if not metadata:
        meta = NO_METADATA
    else:
        if len(metadata) > 1:  # merged, as parsing their bytes joined; each must parse alone
            for part in metadata:
                metadata_pb2.Metadata.FromString(part)
        meta = user_metadata_from(b"".join(metadata))
    # tuple.__new__: a NamedTuple's own __new__ is a Python function, dear at this rate
    return _new(Result, (value, tuple(keys), tuple(tags), meta))


def map_response(raw: bytes) -> MapReply:
    """Read a serialized ``map.v1.MapResponse`` as the generated class would (unknown fields
    skipped, the last of a repeated scalar kept, a repeated message merged): results (1), id
    (2), handshake (3), status (4). Raises :class:`WireError` for bytes that are not one."""
    results: list[Result] = []
    id = ""
    handshake: bool | None = None
    status: bool | None = None
    try:
        for tag, start, stop in _fields(raw, 0, len(raw), _RESPONSE_TAGS):
            if tag == 0x0A:
                results.append(_result(raw, start, stop))
            elif tag == 0x12:
                id = raw[start:stop].decode()
            elif tag == 0x1A:
                handshake = _flag(raw, start, stop, handshake)
            else:
                status = _flag(raw, start, stop, status)
        return MapReply(id, results, handshake, status)
    except (IndexError, UnicodeDecodeError, DecodeError, WireError) as exc:
        raise WireError(f"not a MapResponse: {exc}") from None
