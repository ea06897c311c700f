"""gRPC's wire format on top of HTTP/2, for the lean transport's server and client (``h2`` does
the HTTP/2 framing, HPACK and flow control; this module is the gRPC layer above it).

A gRPC message on an HTTP/2 stream is a 5-byte prefix (compressed flag, 4-byte big-endian
length) and the serialized protobuf; a call opens with ``:method POST``, ``:path
/package.Service/Method``, ``content-type: application/grpc`` and ``te: trailers``; the server
answers ``:status 200`` and ends with trailers ``grpc-status`` (and ``grpc-message``,
percent-encoded; ``grpc-status-details-bin``, base64 without padding)::

    wire = frame_message(b"...protobuf...")
    reader = MessageReader(max_bytes=64 << 20)
    reader.feed(wire)          # [b'...protobuf...']
    status_trailers(13, "UDF_EXECUTION_ERROR(udf): boom", details)
"""

from __future__ import annotations

import base64
import struct
import urllib.parse
from collections.abc import Sequence

__all__ = [
    "CANCELLED",
    "DEADLINE_EXCEEDED",
    "INTERNAL",
    "INVALID_ARGUMENT",
    "OK",
    "RESOURCE_EXHAUSTED",
    "UNAVAILABLE",
    "UNIMPLEMENTED",
    "GrpcWireError",
    "MessageReader",
    "decode_grpc_message",
    "frame_message",
    "parse_timeout",
    "request_headers",
    "response_headers",
    "status_of",
    "status_trailers",
]

# status codes (https://grpc.github.io/grpc/core/md_doc_statuscodes.html)
OK, CANCELLED, INVALID_ARGUMENT, DEADLINE_EXCEEDED = 0, 1, 3, 4
RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE = 8, 12, 13, 14

_PREFIX = struct.Struct(">BI")
Header = tuple[bytes, bytes]


class GrpcWireError(Exception):
    """The peer broke gRPC's framing (compressed message we did not negotiate, message over the
    limit, bad headers); ``code`` is the gRPC status to end the call with, ``messages`` those
    complete before the broken one in the bytes given to :meth:`MessageReader.feed`."""

    def __init__(self, code: int, message: str, messages: list[bytes] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.messages = messages or []


def frame_message(data: bytes) -> bytes:
    """``data`` (a serialized protobuf) as one uncompressed gRPC message."""
    return _PREFIX.pack(0, len(data)) + data


class MessageReader:
    """Splits the DATA bytes of one stream into gRPC messages, whatever the DATA frames' cuts.

    ``feed`` returns every message completed by the bytes given (the bytes of a partial one
    are kept for the next call)."""

    __slots__ = ("_buf", "_max", "_parts", "_want")

    def __init__(self, max_bytes: int) -> None:
        self._buf = b""
        self._max = max_bytes
        # a message spread over many DATA frames: its pieces, joined once complete (appending
        # to one bytes object per frame would copy it again for every frame)
        self._parts: list[bytes] = []
        self._want = 0  # bytes still missing from the parts

    @property
    def pending(self) -> int:
        """Bytes of a message not yet complete."""
        return len(self._buf) + sum(len(p) for p in self._parts)

    def feed(self, data: bytes) -> list[bytes]:
        if self._parts:
            if len(data) < self._want:
                self._parts.append(data)
                self._want -= len(data)
                return []
            self._parts.append(data)
            data, self._parts, self._want = b"".join(self._parts), [], 0
        buf = self._buf + data if self._buf else data
        out: list[bytes] = []
        pos, end = 0, len(buf)
        while end - pos >= 5:
            flag, size = _PREFIX.unpack_from(buf, pos)
            if flag:
                raise self._broken(UNIMPLEMENTED, "a compressed gRPC message arrived; no message "
                                   "encoding was negotiated (grpc-encoding identity)", out)
            if size > self._max:
                raise self._broken(RESOURCE_EXHAUSTED, f"gRPC message of {size} bytes is over "
                                   f"the limit of {self._max} bytes", out)
            stop = pos + 5 + size
            if stop > end:
                if end - pos > 4096:  # a big message under way: collect its pieces
                    self._parts, self._want, self._buf = [buf[pos:]], stop - end, b""
                    return out
                break
            out.append(buf[pos + 5:stop])
            pos = stop
        self._buf = buf[pos:] if pos < end else b""
        return out

    def _broken(self, code: int, message: str, out: list[bytes]) -> GrpcWireError:
        """The error for a broken frame; nothing is kept (the stream cannot go on, and no byte
        of it is pending any more)."""
        self._buf, self._parts, self._want = b"", [], 0
        return GrpcWireError(code, message, out)


def request_headers(path: str, *, authority: str = "localhost",
                    timeout_s: float | None = None) -> list[Header]:
    """The headers a gRPC client opens a call with."""
    headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path.encode()),
               (b":authority", authority.encode()), (b"content-type", b"application/grpc"),
               (b"te", b"trailers")]
    if timeout_s is not None:
        headers.append((b"grpc-timeout", f"{max(1, int(timeout_s * 1000))}m".encode()))
    return headers


def response_headers() -> list[Header]:
    """The headers a gRPC server answers a call with."""
    return [(b":status", b"200"), (b"content-type", b"application/grpc")]


def status_trailers(code: int, message: str = "", details: bytes | None = None,
                    *, headers_sent: bool = True) -> list[Header]:
    """The trailers that end a call (with ``:status``/``content-type`` first for a
    trailers-only response, ``headers_sent=False``)."""
    out = [] if headers_sent else response_headers()
    out.append((b"grpc-status", str(code).encode()))
    if message:
        out.append((b"grpc-message", urllib.parse.quote(message, safe=" !\"#$&'()*+,-./:;<=>?@"
                                                        "[\\]^_`{|}~").encode()))
    if details is not None:
        out.append((b"grpc-status-details-bin", base64.b64encode(details).rstrip(b"=")))
    return out


def decode_grpc_message(value: bytes) -> str:
    """A ``grpc-message`` trailer as text."""
    return urllib.parse.unquote(value.decode("ascii", "replace"))


def status_of(headers: Sequence[Header]) -> tuple[int, str, bytes | None]:
    """``(code, message, details)`` from a call's trailers (code UNKNOWN=2 when absent)."""
    code, message, details = 2, "", None
    for name, value in headers:
        if name == b"grpc-status":
            code = int(value)
        elif name == b"grpc-message":
            message = decode_grpc_message(value)
        elif name == b"grpc-status-details-bin":
            details = base64.b64decode(value + b"=" * (-len(value) % 4))
    return code, message, details


_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def parse_timeout(value: bytes) -> float:
    """A ``grpc-timeout`` header (``"100m"``: 100 ms) in seconds; raises GrpcWireError."""
    unit = _UNITS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        raise GrpcWireError(INVALID_ARGUMENT, f"bad grpc-timeout header {value!r}")
    return int(digits) * unit
