"""Plain-Python types the runtime servicers hand to, and expect from, handlers.

Handlers never see protobuf objects: a map/transformer/sink handler receives :class:`Datum`
values, a map/transformer handler returns :class:`Result` values, a sink handler returns
:class:`SinkResult` values and a source handler implements :class:`SourceHandler`.

Example::

    def identity(datum: Datum) -> list[Result]:
        return [Result(datum.value, keys=datum.keys, user_metadata=datum.user_metadata)]
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Protocol

import attrs

# Reserved tag: the engine drops the message and acks its parent. The tag is literally the
# text "U+005C__DROP__" (numa compares this exact string; it is not a backslash). Defined once,
# with the routing.
from nfbuilder.plan.routing import DROP

UserMetadata = Mapping[str, Mapping[str, bytes]]


# Immutable shared defaults: cheaper than a factory call per message, and safe to share.
NO_METADATA: UserMetadata = MappingProxyType({})
NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class FrozenMetadata(Mapping[str, Mapping[str, bytes]]):
    """User metadata that cannot change after construction, and is hashable.

    Use it for metadata that many results share (a vertex's pipeline marker): because it cannot
    change, the servicers build its wire form once and reuse it for every result. It compares
    equal to plain dicts with the same content.

    Example::

        meta = FrozenMetadata({"nfbuilder": {"pipeline": b"0"}})
        meta["nfbuilder"]["pipeline"]    # b'0'
        Result(b"x", user_metadata=meta)
    """

    __slots__ = ("_groups", "_hash")

    def __init__(self, groups: Mapping[str, Mapping[str, bytes]]) -> None:
        # Copies all the way down, so whoever built ``groups`` cannot change us afterwards.
        self._groups: dict[str, Mapping[str, bytes]] = {
            str(name): MappingProxyType({str(k): bytes(v) for k, v in values.items()})
            for name, values in groups.items()
        }
        self._hash = hash(frozenset((n, frozenset(v.items())) for n, v in self._groups.items()))

    def __getitem__(self, name: str) -> Mapping[str, bytes]:
        return self._groups[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._groups)

    def __len__(self) -> int:
        return len(self._groups)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if isinstance(other, Mapping):
            return {n: dict(v) for n, v in self._groups.items()} == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenMetadata({ {n: dict(v) for n, v in self._groups.items()} !r})"


@attrs.frozen
class Datum:
    """One input message for a map, transformer or sink handler.

    ``headers`` and ``user_metadata`` may be read-only views over the wire message: copy them
    (``dict(...)``) before changing them.

    Example::

        Datum(id="v-1-0", keys=("k",), value=b"x", event_time_ns=0, watermark_ns=None,
              headers={}, user_metadata={})
    """

    id: str
    keys: tuple[str, ...]
    value: bytes
    event_time_ns: int
    watermark_ns: int | None
    headers: Mapping[str, str]
    user_metadata: UserMetadata


@attrs.frozen
class Result:
    """One output message of a map or transformer handler.

    ``user_metadata`` is emitted as given: the engine drops the parent's user metadata unless a
    result repeats it, so pass ``datum.user_metadata`` on to propagate it.
    ``event_time_ns`` is used by the source transformer only; None keeps the input's event time.

    Example::

        Result(b"payload", keys=("k",), tags=("even",))
        Result.drop()
    """

    value: bytes
    keys: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    user_metadata: UserMetadata = NO_METADATA
    event_time_ns: int | None = None

    @classmethod
    def drop(cls) -> Result:
        """A result that tells the engine to drop the message (``Result.drop()``)."""
        return _DROPPED


_DROPPED = Result(b"", tags=(DROP,))

#: A map or transformer handler: synchronous user code, one datum in, zero or more results out.
MapHandler = Callable[[Datum], Sequence[Result]]

#: One output of a :data:`PayloadFn`: ``(value, keys, tags, event_time_ns)``, a Result without
#: its user metadata (the step core's ``Out``).
Output = tuple[bytes, tuple[str, ...], tuple[str, ...], "int | None"]

#: What a :data:`MapHandler` that reads nothing of a datum but its id and value may carry as its
#: ``payload`` attribute, with ``payload_metadata``, the user metadata all its results carry:
#: ``handler.payload(datum.id, datum.value)`` returns what ``handler(datum)`` does, as
#: :data:`Output` tuples. The map servicer then builds neither the Datum nor the Results, which
#: cost more than the rest of a small message's conversion (a vertex program serving one
#: pipeline has one).
PayloadFn = Callable[[str, bytes], Sequence[Output]]


@attrs.frozen
class SinkResult:
    """The outcome of writing one datum in a sink: ``ok=False`` makes the engine retry it.

    Example::

        SinkResult("v-1-0", ok=False, err_msg="connection refused by 10.0.0.5:7002")
    """

    id: str
    ok: bool
    err_msg: str = ""


#: A sink handler: gets one batch and returns exactly one SinkResult per datum id.
SinkHandler = Callable[[Sequence[Datum]], Awaitable[Sequence[SinkResult]]]


@attrs.frozen
class SourceMessage:
    """One message produced by a source handler's ``read``.

    ``offset`` must be non-empty bytes; the engine hands it back in ``ack``/``nack`` together
    with ``partition_id``.

    Example::

        SourceMessage(b"hello", offset=b"42", partition_id=0, event_time_ns=time.time_ns())
    """

    payload: bytes
    offset: bytes
    partition_id: int
    event_time_ns: int
    keys: tuple[str, ...] = ()
    headers: Mapping[str, str] = NO_HEADERS
    user_metadata: UserMetadata = NO_METADATA


#: ``(offset bytes, partition id)`` pairs, as given to ``ack`` and ``nack``.
Offsets = Sequence[tuple[bytes, int]]


class SourceHandler(Protocol):
    """What the source servicer drives. The engine never overlaps two of these calls.

    Example::

        class ListSource:
            async def read(self, num_records, timeout_s): ...
            async def ack(self, offsets): ...
            async def nack(self, offsets): ...
            async def pending(self): return -1
            async def partitions(self): return [0]
    """

    async def read(self, num_records: int, timeout_s: float) -> Sequence[SourceMessage]:
        """Return up to ``num_records`` messages, waiting at most ``timeout_s`` for them."""
        ...

    async def ack(self, offsets: Offsets) -> None:
        """The messages at these offsets are fully processed."""
        ...

    async def nack(self, offsets: Offsets) -> None:
        """The messages at these offsets must be delivered again by a later ``read``."""
        ...

    async def pending(self) -> int:
        """Messages available but not yet read; -1 when unknown."""
        ...

    async def partitions(self) -> Sequence[int]:
        """The partitions this source instance reads from."""
        ...
