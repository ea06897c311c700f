"""TCP I/O for Wallaroo's ``TCPSourceConfig`` / ``TCPSinkConfig``: one import for the servicers.

The pieces live in :mod:`~nfbuilder.runtime.framing` (Wallaroo framing),
:mod:`~nfbuilder.runtime.tcpsource` (listener with offsets, ack/nack, back-pressure) and
:mod:`~nfbuilder.runtime.tcpsink` (reconnecting writer)::

    from nfbuilder.runtime.tcp import TcpFrameSource, TcpSinkWriter
"""

from nfbuilder.runtime.framing import (
    DEFAULT_MAX_BUFFERED_BYTES,
    DEFAULT_MAX_FRAME,
    DEFAULT_MAX_PARTIAL_BYTES,
    FrameParser,
    FramingError,
)
from nfbuilder.runtime.tcpsink import TcpSinkWriter
from nfbuilder.runtime.tcpsource import Frame, TcpFrameSource

__all__ = [
    "DEFAULT_MAX_BUFFERED_BYTES",
    "DEFAULT_MAX_FRAME",
    "DEFAULT_MAX_PARTIAL_BYTES",
    "Frame",
    "FrameParser",
    "FramingError",
    "TcpFrameSource",
    "TcpSinkWriter",
]
