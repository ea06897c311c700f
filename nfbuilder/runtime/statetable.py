"""In-memory state objects of one vertex process, backed by a durable ``StateStore``.

One object per (state name, key), built with ``State()`` on first use or loaded from the store's
last snapshot. Ids of messages applied since the last snapshot are kept and written with the next
snapshot, in the same atomic write, so a redelivered message already reflected in the snapshot is
recognised::

    table = StateTable(open_store("sqlite:///s.db", namespace="app"), codec)
    entry = table.entry(spec, "a")
    if not entry.already_applied("v-1-0"):
        out, save = step(data, entry.obj)
        table.applied(spec, "a", entry, "v-1-0", save)
"""

from __future__ import annotations

from typing import Any

from nfbuilder.codec import Codec
from nfbuilder.runtime.state.store import StateStore
from nfbuilder.topology import StateSpec


class Entry:
    """A live state object with its applied-id bookkeeping."""

    __slots__ = ("obj", "pending", "persisted")

    def __init__(self, obj: Any, persisted: frozenset[str]) -> None:
        self.obj = obj
        self.persisted = persisted  # ids reflected in the stored snapshot
        self.pending: list[str] = []  # applied in memory since the last snapshot

    def already_applied(self, msg_id: str) -> bool:
        return msg_id in self.persisted


class StateTable:
    """All state entries of a process; ``store=None`` keeps them in memory only."""

    def __init__(self, store: StateStore | None, codec: Codec) -> None:
        self.store = store
        self.codec = codec
        self._entries: dict[tuple[str, str], Entry] = {}

    def entry(self, spec: StateSpec, key: str) -> Entry:
        found = self._entries.get((spec.name, key))
        if found is None:
            snap = self.store.load(spec.name, key) if self.store is not None else None
            if snap is None:
                found = Entry(spec.state_class(), frozenset())
            else:
                found = Entry(self.codec.loads(snap.data), frozenset(snap.applied_ids))
            self._entries[(spec.name, key)] = found
        return found

    def applied(self, spec: StateSpec, key: str, entry: Entry, msg_id: str, save: bool) -> None:
        """Record that ``msg_id`` changed ``entry``; persist it (with the pending ids) if ``save``."""
        if msg_id:
            entry.pending.append(msg_id)
        if save and self.store is not None:
            self.store.save(spec.name, key, self.codec.dumps(entry.obj), entry.pending)
            entry.persisted = entry.persisted.union(entry.pending)
            entry.pending = []

    def keys(self, state_name: str) -> list[str]:
        return [k for (name, k) in self._entries if name == state_name]

    def get(self, state_name: str, key: str) -> Any:
        """The live object (for tests and the in-process harness)."""
        return self._entries[(state_name, key)].obj
