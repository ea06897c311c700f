"""Where a vertex's outputs go: the one routing function of the engine and the harness.

Numaflow forwards an output along every out-edge whose tag condition it meets (``or``: one
common tag is enough, ``not``: none of them; an edge without a condition takes everything),
drops an output tagged :data:`DROP`, and picks the partition of an ordered vertex by hashing
the message keys::

    router = Router(doc.edges_from("split"))
    router.destinations(("orders",))     # ('orders-sink',)
    partition_of(("a",), 2)              # 0 or 1, the same for the same keys

An output's id is built from the vertex that wrote it, the offset of the message it came from and
its index among that message's outputs (``output_id``), so the same message re-processed after a
redelivery has outputs with the same ids.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence

from nfbuilder.plan.graph import Edge

#: the reserved tag of a dropped message (the literal text numa and pynumaflow use)
DROP = "U+005C__DROP__"
#: the tag of a dead letter: its edge goes to the dead-letter sink, every other edge of the
#: vertex has ``not`` this tag
DEAD_LETTER = "nfbuilder-dead-letter"
#: how a dropped message's value says it was dropped by a rule, not filtered (numa ignores the
#: value of a dropped message; the engine reads it for its summary)
_RULE_DROP = b"nfbuilder-drop:"


def drop_value(step: str, key: str) -> bytes:
    """The value of a message ``step`` dropped because its partition key was not declared."""
    return _RULE_DROP + json.dumps({"step": step, "key": key}).encode()


def drop_reason(value: bytes) -> dict[str, str] | None:
    """What :func:`drop_value` put in ``value`` (None: a plain drop, i.e. a filtered message)."""
    if not value.startswith(_RULE_DROP):
        return None
    found: dict[str, str] = json.loads(value[len(_RULE_DROP):])
    return found


class Router:
    """The out-edges of one vertex, ready to route outputs by their tags."""

    __slots__ = ("all", "always", "untagged", "_conditional")

    def __init__(self, edges: Iterable[Edge]) -> None:
        edges = tuple(edges)
        conds = [(e.dst, e.operator, frozenset(e.tags) if e.tags else None) for e in edges]
        #: every destination, in edge order
        self.all: tuple[str, ...] = tuple(dst for dst, _, _ in conds)
        #: the destinations when no edge has a condition (every output goes to all of them),
        #: else None
        self.always: tuple[str, ...] | None = (
            self.all if all(c is None for _, _, c in conds) else None
        )
        self._conditional = tuple(conds)
        #: the destinations of an output without tags (most outputs), worked out once
        self.untagged: tuple[str, ...] = self._matching(())

    def destinations(self, tags: Sequence[str]) -> tuple[str, ...]:
        """The vertices an output with ``tags`` goes to (none when it is dropped)."""
        if not tags:
            return self.untagged
        if DROP in tags:
            return ()
        if self.always is not None:
            return self.always
        return self._matching(tags)

    def _matching(self, tags: Sequence[str]) -> tuple[str, ...]:
        return tuple(dst for dst, op, cond in self._conditional
                     if cond is None or _meets(op, cond, tags))


def _meets(operator: str, cond: frozenset[str], tags: Sequence[str]) -> bool:
    """numa's ``check_operator_condition``: ``or`` one tag in common, ``and`` all of the
    condition's tags, ``not`` none of them."""
    if operator == "and":
        return cond.issubset(tags)
    if operator == "not":
        return cond.isdisjoint(tags)
    return not cond.isdisjoint(tags)


def partition_of(keys: Sequence[str], partitions: int) -> int:
    """The partition (pod) of an ordered vertex that a message with ``keys`` goes to: numa's
    ``determine_partition``, Rust's ``DefaultHasher`` (SipHash-1-3, zero keys) over the keys
    joined with ``:``, modulo the partition count."""
    if partitions <= 1:
        return 0
    return _hash_of(":".join(keys)) % partitions


@functools.lru_cache(maxsize=65536)
def _hash_of(joined: str) -> int:
    """``siphash13`` of the joined keys, remembered: keys repeat (a word, a symbol), and the
    hash in pure Python is the dearest step of routing a message."""
    return siphash13(joined.encode())


_MASK = 0xFFFFFFFFFFFFFFFF


def siphash13(data: bytes) -> int:
    """SipHash-1-3 with zero keys: what Rust's ``DefaultHasher::new()`` gives after
    ``write(data)`` and ``finish()`` (one compression round, three finalization rounds)."""
    v0, v1 = 0x736F6D6570736575, 0x646F72616E646F6D
    v2, v3 = 0x6C7967656E657261, 0x7465646279746573
    n = len(data)
    tail = n - n % 8
    words = [int.from_bytes(data[i:i + 8], "little") for i in range(0, tail, 8)]
    words.append(((n & 0xFF) << 56) | int.from_bytes(data[tail:], "little"))
    rounds = [1] * len(words)
    for m, count in zip([*words, None], [*rounds, 3], strict=True):
        if m is not None:
            v3 ^= m
        else:
            v2 ^= 0xFF
        for _ in range(count):
            v0 = (v0 + v1) & _MASK
            v1 = ((v1 << 13) | (v1 >> 51)) & _MASK ^ v0
            v0 = ((v0 << 32) | (v0 >> 32)) & _MASK
            v2 = (v2 + v3) & _MASK
            v3 = ((v3 << 16) | (v3 >> 48)) & _MASK ^ v2
            v0 = (v0 + v3) & _MASK
            v3 = ((v3 << 21) | (v3 >> 43)) & _MASK ^ v0
            v2 = (v2 + v1) & _MASK
            v1 = ((v1 << 17) | (v1 >> 47)) & _MASK ^ v2
            v2 = ((v2 << 32) | (v2 >> 32)) & _MASK
        if m is not None:
            v0 ^= m
    return v0 ^ v1 ^ v2 ^ v3


def output_id(producer: str, offset: str | int, index: int | str) -> str:
    """``<producer>-<offset>-<index>``: output ``index`` of the message read at ``offset`` by
    vertex ``producer``."""
    return f"{producer}-{offset}-{index}"
