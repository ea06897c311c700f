"""Protobuf's wire format for the few messages written by hand (the engine's requests, the sink
vertex's responses): varints and length-delimited fields, the bytes the generated classes write.

Example::

    field(b"\\x0a", b"id")   # b'\\n\\x02id' (field 1, length 2)
"""

from __future__ import annotations

#: the one-byte varints, 0 to 127 (most lengths)
SMALL = [bytes((i,)) for i in range(0x80)]


def varint(n: int) -> bytes:
    """``n`` (>= 0) as a protobuf varint."""
    if n < 0x80:
        return SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(tag: bytes, body: bytes) -> bytes:
    """A length-delimited field: its tag byte(s), the length (a varint), the bytes."""
    n = len(body)
    return tag + (SMALL[n] if n < 0x80 else varint(n)) + body
