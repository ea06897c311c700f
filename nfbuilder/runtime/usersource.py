"""User-defined sources served over ``source.v1``, and Wallaroo's ``GenSourceConfig`` as one.

A user source is any object with numa's user-defined source shape (``read``, ``ack``, and
optionally ``nack``, ``pending``, ``partitions``; each plain or ``async def``; see
``UserSourceConfig``). :class:`UserSourceHandler` serves it to numa: the records go out as they
came (the value's bytes for a source with a decoder, else the value pickled by the app's codec),
and the vertex's transformer decodes them and runs its work, so a record the decoder or a step
rejects is a dead letter like any other message. A Wallaroo generator (``initial_value()``,
then ``apply(previous)``) is served through the same code, as a :class:`GeneratorSource`::

    handler = UserSourceHandler(Lines("in.txt"), codec, partition=0, where="pipeline 'p'")
    msgs = await handler.read(100, 1.0)      # up to 100 SourceMessages
    await handler.ack([(msgs[0].offset, 0)])

Offsets keep their type across the wire: a record's offset (bytes, str or int) comes back to
``ack``/``nack`` as it was given, also in a restarted process.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from nfbuilder.codec import Codec
from nfbuilder.records import Record, event_time_ns
from nfbuilder.runtime.errors import UserCodeError
from nfbuilder.runtime.messages import SourceMessage
from nfbuilder.runtime.stages import user_error
from nfbuilder.runtime.steploop import awaiter

log = logging.getLogger("nfbuilder.runtime")

_KINDS = {bytes: b"b", str: b"s", int: b"i"}


def wire_offset(offset: Any) -> bytes:
    """A record's offset as numa carries it: its type's letter, then its bytes
    (``wire_offset(7) == b"i7"``); ``TypeError`` for a type an offset may not be."""
    kind = _KINDS.get(type(offset))
    if kind is None:
        raise TypeError(f"a record's offset must be bytes, str or int, got "
                        f"{type(offset).__name__}: {offset!r}")
    if kind == b"b":
        return kind + offset  # type: ignore[no-any-return]
    return kind + str(offset).encode()


def user_offset(wire: bytes) -> Any:
    """The offset :func:`wire_offset` made ``wire`` from (``user_offset(b"i7") == 7``)."""
    kind, body = wire[:1], wire[1:]
    if kind == b"b":
        return body
    if kind == b"s":
        return body.decode()
    if kind == b"i":
        return int(body)
    raise ValueError(f"offset {wire!r} was not made by this source (no type letter)")


def as_record(item: Any) -> Record:
    """A ``Record``, or an ``(offset, value)`` / ``(offset, value, event_time)`` tuple, as a
    ``Record``; ``TypeError`` for anything else."""
    if type(item) is Record:
        return item
    if isinstance(item, tuple) and len(item) in (2, 3):
        return Record(*item)
    raise TypeError(f"read() must give Records or (offset, value) tuples, got "
                    f"{type(item).__name__}: {item!r}")


class UserSourceHandler:
    """The source handler of a user source vertex (one replica: ``partition``).

    ``codec`` pickles record values (a source without a decoder); None: the values must be
    bytes, which the transformer decodes. ``where`` names the pipeline for error messages."""

    def __init__(self, source: Any, codec: Codec | None, partition: int, where: str) -> None:
        self.source = source
        self.dumps = codec.dumps if codec is not None else None
        self.partition = partition
        self.where = f"{where} source"
        self._extra: list[SourceMessage] = []  # read beyond what numa asked for

    async def _call(self, method: str, *args: Any) -> Any:
        with _user_code(self.where, self.source, method):
            result = getattr(self.source, method)(*args)
            if inspect.isawaitable(result):
                result = await result
            return result

    async def read(self, num_records: int, timeout_s: float) -> list[SourceMessage]:
        if self._extra:  # a read that gave more than asked for: the rest first
            out, self._extra = self._extra[:num_records], self._extra[num_records:]
            return out
        records = await self._call("read", num_records, timeout_s)
        now = time.time_ns()
        out = []
        for item in records or ():
            try:
                r = as_record(item)
                out.append(SourceMessage(self._payload(r.value), wire_offset(r.offset),
                                         self.partition,
                                         now if r.event_time is None else event_time_ns(
                                             r.event_time, "record's event_time")))
            except (TypeError, ValueError) as exc:
                raise UserCodeError(f"{self.where}: {exc}", function=f"{_name(self.source)}.read",
                                    step=None) from None
        out, self._extra = out[:num_records], out[num_records:]
        return out

    def _payload(self, value: Any) -> bytes:
        if self.dumps is not None:
            return self.dumps(value)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
        raise TypeError(f"a record's value must be bytes for a source with a decoder, got "
                        f"{type(value).__name__}: {value!r:.200}")

    async def ack(self, offsets: Sequence[tuple[bytes, int]]) -> None:
        await self._call("ack", [user_offset(o) for o, _ in offsets])

    async def nack(self, offsets: Sequence[tuple[bytes, int]]) -> None:
        if callable(getattr(self.source, "nack", None)):
            await self._call("nack", [user_offset(o) for o, _ in offsets])
        else:
            log.warning("%s: %d record(s) were not processed and %s has no nack method: they "
                        "are read again only if the source re-reads what it never saw acked",
                        self.where, len(offsets), _name(self.source))

    async def pending(self) -> int:
        if not callable(getattr(self.source, "pending", None)):
            return -1
        count = await self._call("pending")
        return -1 if count is None else int(count)

    async def partitions(self) -> list[int]:
        if not callable(getattr(self.source, "partitions", None)):
            return [self.partition]
        return [int(p) for p in await self._call("partitions")]


@contextlib.contextmanager
def _user_code(where: str, source: Any, method: str) -> Iterator[None]:
    """An exception of the user's ``source.method`` as the ``UserCodeError`` naming it."""
    try:
        yield
    except UserCodeError:
        raise
    except Exception as exc:
        raise user_error(where, source, method, exc) from exc


def _name(obj: Any) -> str:
    return type(obj).__qualname__


def take(source: Any, count: int, where: str,
         timeout_s: float = 0.05) -> Iterable[tuple[Any, Record]]:
    """Read up to ``count`` records from ``source`` outside a server (the in-process harness),
    yielding ``(ack, record)``: call ``ack()`` once the record is handled. Stops early when a
    read gives nothing and ``pending()`` says nothing is left (or the source has no
    ``pending``). ``async def`` methods are awaited on the step loop."""
    run = awaiter(60.0)

    def call(method: str, *args: Any) -> Any:
        with _user_code(f"{where} source", source, method):
            result = getattr(source, method)(*args)
            return run(result) if inspect.iscoroutine(result) else result

    taken = 0
    while taken < count:
        batch = [as_record(r) for r in call("read", min(count - taken, 500), timeout_s) or ()]
        if not batch:
            left = call("pending") if callable(getattr(source, "pending", None)) else 0
            if not left:
                return
            continue
        for r in batch[:count - taken]:
            taken += 1
            yield _acker(call, r.offset), r


def _acker(call: Callable[..., Any], offset: Any) -> Callable[[], None]:
    return lambda: call("ack", [offset])


class GeneratorSource:
    """Wallaroo 0.5.4's generator (``initial_value()``, then ``apply(previous)`` until None) in
    the user-source shape: offsets 0, 1, 2...; a record stays until acked, and a nacked one is
    read again first."""

    def __init__(self, generator: Any) -> None:
        self.generator = generator
        self._previous: Any = None
        self._started = False
        self._ended = False
        self._next = 0
        self._unacked: dict[int, Any] = {}
        self._again: list[int] = []

    def _generate(self) -> Record | None:
        if self._ended:
            return None
        method = "apply" if self._started else "initial_value"
        try:
            value = (self.generator.apply(self._previous) if self._started
                     else self.generator.initial_value())
        except Exception as exc:
            raise user_error("the generator", self.generator, method, exc) from exc
        self._started = True
        if value is None:
            self._ended = True
            return None
        self._previous = value
        offset, self._next = self._next, self._next + 1
        self._unacked[offset] = value
        return Record(offset, value)

    def read(self, n: int, timeout_s: float) -> list[Record]:
        out: list[Record] = []
        while self._again and len(out) < n:
            offset = self._again.pop(0)
            if offset in self._unacked:
                out.append(Record(offset, self._unacked[offset]))
        while len(out) < n and (record := self._generate()) is not None:
            out.append(record)
        return out

    def ack(self, offsets: Sequence[int]) -> None:
        for offset in offsets:
            self._unacked.pop(offset, None)

    def nack(self, offsets: Sequence[int]) -> None:
        for offset in offsets:
            if offset in self._unacked and offset not in self._again:
                self._again.append(offset)

    def pending(self) -> int | None:
        if self._again:
            return len(self._again)
        return 0 if self._ended else None
