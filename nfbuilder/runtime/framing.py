"""Wallaroo's TCP source framing: a fixed-size header, then a payload whose size the header gives.

Wallaroo reads ``header_length`` bytes, asks the decoder's ``payload_length(header)`` how many
payload bytes follow, reads them, and hands only the payload to ``decode``. :class:`FrameParser`
does the same over an arbitrary split of the byte stream::

    parser = FrameParser(4, lambda h: struct.unpack(">I", h)[0])
    parser.feed(b"\\x00\\x00\\x00\\x02hi\\x00\\x00")   # -> [b"hi"]; keeps the 2 header bytes
    parser.at_eof()                                   # FramingError: a partial header is left
"""

from __future__ import annotations

import operator
from collections.abc import Callable

__all__ = [
    "DEFAULT_MAX_BUFFERED_BYTES",
    "DEFAULT_MAX_FRAME",
    "DEFAULT_MAX_PARTIAL_BYTES",
    "FrameParser",
    "FramingError",
]

#: Largest payload accepted by default (16 MiB): a bound on memory per connection, so one
#: corrupt or hostile length header cannot make the source allocate gigabytes. Deployments set
#: it with ``NFBUILDER_MAX_FRAME`` (read by :class:`~nfbuilder.runtime.settings.Settings`).
DEFAULT_MAX_FRAME = 16 * 2**20

# The TCP source's byte bounds live here, next to DEFAULT_MAX_FRAME, so that Settings can name
# the defaults without importing the asyncio listener.

#: Default bound on the payload bytes of the frames a TCP source holds, complete but not yet
#: acked (``NFBUILDER_SOURCE_BUFFER_BYTES``).
DEFAULT_MAX_BUFFERED_BYTES = 64 * 2**20

#: Default bound on the bytes of partially received frames over all of a TCP source's
#: connections (``NFBUILDER_SOURCE_PARTIAL_BYTES``).
DEFAULT_MAX_PARTIAL_BYTES = 64 * 2**20

# Wallaroo accepts header lengths 1..8 (anything else fell back to 4 with a printed error).
_MIN_HEADER, _MAX_HEADER = 1, 8


class FramingError(Exception):
    """The byte stream does not follow the framing, or ``payload_length`` misbehaved.

    ``frames`` holds the payloads that were completed in the same :meth:`FrameParser.feed` call
    before the error, so a caller can still deliver them (they were well formed)::

        try:
            payloads = parser.feed(data)
        except FramingError as err:
            payloads = list(err.frames)   # deliver these, then close the connection
    """

    def __init__(self, message: str, frames: tuple[bytes, ...] = ()) -> None:
        super().__init__(message)
        self.frames = frames


class FrameParser:
    """Split a byte stream into payloads: ``header_length`` bytes of header, then the payload.

    ``payload_length`` is the user's decoder method; its result is checked (an ``int`` in
    ``0..max_frame``) and its exceptions become :class:`FramingError`. After an error the parser is
    unusable: every later call raises the same error (the connection must be closed, since the
    position of the next frame is unknown).

    Cost is linear in the bytes fed, however they are split: the buffer is a ``bytearray`` read
    through a ``memoryview`` and compacted once per :meth:`feed`.

        parser = FrameParser(2, lambda h: int.from_bytes(h, "big"), max_frame=1024)
        parser.feed(b"\\x00\\x01a\\x00")   # -> [b"a"]
        parser.feed(b"\\x01b")            # -> [b"b"]
    """

    def __init__(
        self,
        header_length: int,
        payload_length: Callable[[bytes], int],
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        if (
            isinstance(header_length, bool)
            or not isinstance(header_length, int)
            or not _MIN_HEADER <= header_length <= _MAX_HEADER
        ):
            raise ValueError(
                f"header_length must be an int from {_MIN_HEADER} to {_MAX_HEADER} (Wallaroo's "
                f"limits), got {header_length!r}: return the size of the length prefix from the "
                "decoder's header_length, e.g. 4 for a '>I' prefix"
            )
        if isinstance(max_frame, bool) or not isinstance(max_frame, int) or max_frame < 0:
            raise ValueError(f"max_frame must be an int >= 0, got {max_frame!r}")
        self._header_length = header_length
        self._payload_length = payload_length
        self._max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0  # start of the unconsumed bytes in _buf
        self._want: int | None = None  # payload size once the header is consumed
        self._error: FramingError | None = None

    def feed(self, data: bytes) -> list[bytes]:
        """Append ``data``; return the payloads completed by it (headers stripped), oldest first.

        Raises :class:`FramingError` (with ``frames`` set to the payloads completed before the
        problem) when ``payload_length`` raises or returns an invalid length.
        """
        if self._error is not None:
            raise FramingError(str(self._error))
        self._buf += data
        out: list[bytes] = []
        try:
            self._parse(out)
        except FramingError as err:
            self._error = err
            err.frames = tuple(out)
            raise
        finally:
            # Compacting once per feed keeps the cost linear: the prefix removed here was scanned
            # once, and what stays is at most one partial frame.
            if self._pos:
                del self._buf[: self._pos]
                self._pos = 0
        return out

    def at_eof(self) -> None:
        """Check that the stream ended on a frame boundary; raise :class:`FramingError` if not."""
        if self._error is not None:
            raise FramingError(str(self._error))
        left = len(self._buf) - self._pos
        if self._want is not None:
            raise FramingError(
                f"stream ended inside a frame: {left} of {self._want} payload bytes received; "
                "the sender closed the connection before finishing the frame"
            )
        if left:
            raise FramingError(
                f"stream ended inside a frame header: {left} of {self._header_length} header "
                "bytes received; the sender closed the connection before finishing the frame"
            )

    def buffered(self) -> int:
        """Bytes held for a frame not yet complete (a bound on this parser's memory)."""
        return len(self._buf) - self._pos

    def _parse(self, out: list[bytes]) -> None:
        hl = self._header_length
        end = len(self._buf)
        pos = self._pos
        # The view must be released before _buf is resized (feed compacts it afterwards).
        with memoryview(self._buf) as view:
            try:
                while True:
                    if self._want is None:
                        if end - pos < hl:
                            break
                        self._want = self._checked_length(bytes(view[pos : pos + hl]))
                        pos += hl
                    if end - pos < self._want:
                        break
                    out.append(bytes(view[pos : pos + self._want]))
                    pos += self._want
                    self._want = None
            finally:
                self._pos = pos

    def _checked_length(self, header: bytes) -> int:
        try:
            raw = self._payload_length(header)
        except Exception as exc:  # user code: anything may come out of it
            raise FramingError(
                f"payload_length raised {type(exc).__name__}: {exc} for header {header.hex()} "
                f"(hex); fix the decoder's payload_length so it returns the payload size"
            ) from exc
        try:
            if isinstance(raw, bool):
                raise TypeError("bool is not a length")
            size = operator.index(raw)
        except TypeError:
            raise FramingError(
                f"payload_length returned {raw!r} ({type(raw).__name__}) for header "
                f"{header.hex()} (hex); it must return an int from 0 to {self._max_frame}"
            ) from None
        if size < 0 or size > self._max_frame:
            raise FramingError(
                f"payload_length returned {size} for header {header.hex()} (hex), outside the "
                f"allowed 0..{self._max_frame} bytes (max_frame); the stream is not framed as "
                "the decoder expects, or this application's frames are larger than max_frame: "
                "raise it with the environment variable NFBUILDER_MAX_FRAME (bytes)"
            )
        return size
