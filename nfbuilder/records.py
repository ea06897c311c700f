"""What user code gives the runtime besides plain objects: an event time, a source record.

Both are plain data shared by the API (``wallaroo.EventTime``, ``wallaroo.Record``) and the
runtime that reads them, so this module imports nothing of nfbuilder::

    @wallaroo.decoder(header_length=4, length_fmt=">I")
    def decode(bs):
        reading = json.loads(bs)
        return wallaroo.EventTime(reading, reading["ts"])    # seconds since the epoch

    class Numbers:                       # a user-defined source (UserSourceConfig)
        def read(self, n, timeout_s):
            return [wallaroo.Record(offset=i, value=i, event_time=t) for i, t in ...]
"""

from __future__ import annotations

import datetime
import math
from typing import Any

import attrs

#: what an offset of a user-defined source may be
OFFSET_TYPES = (bytes, str, int)


def event_time_ns(when: Any, what: str = "event time") -> int:
    """``when`` (a ``datetime``, naive ones taken as UTC, or seconds since the Unix epoch, int
    or float) in nanoseconds since the epoch; ``TypeError`` for anything else::

        event_time_ns(1.5)   # 1500000000
    """
    if isinstance(when, datetime.datetime):
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        delta = when - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    if isinstance(when, int) and not isinstance(when, bool):
        return when * 1_000_000_000
    if isinstance(when, float) and math.isfinite(when):
        # whole seconds apart from the fraction: ``when * 1e9`` would round to 256 ns today
        whole = math.floor(when)
        return int(whole) * 1_000_000_000 + round((when - whole) * 1_000_000_000)
    raise TypeError(f"the {what} must be a datetime or seconds since the Unix epoch (int or "
                    f"float), got {type(when).__name__}: {when!r}")


@attrs.frozen
class EventTime:
    """A decoded message and the time it happened, as a decoder (or a user-defined source)
    returns it: the step gets ``value``; the message's event time, from which Numaflow's
    watermarks follow, is ``time`` (a ``datetime`` or seconds since the epoch) instead of the
    time it arrived::

        EventTime({"temp": 21.5}, 1767225600.0)
    """

    value: Any
    time: Any

    @property
    def time_ns(self) -> int:
        return event_time_ns(self.time)


@attrs.frozen
class Record:
    """One message a user-defined source read: its ``offset`` (bytes, str or int, unique in
    the source; handed back to ``ack``/``nack`` as given), its ``value`` (bytes for a source
    with a decoder, else any picklable object) and, optionally, its ``event_time``::

        Record(offset=41, value="a line", event_time=1767225600.0)
    """

    offset: Any
    value: Any
    event_time: Any = None
