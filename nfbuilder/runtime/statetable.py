"""In-memory state objects of one vertex process, backed by a durable ``StateStore``.

One object per (state name, key), built with ``State()`` on first use or loaded from the store's
last snapshot. The ids of messages applied since the last snapshot, with the outputs each
produced, are kept (the newest ``store.id_window`` of them, as many as the store keeps) and
written with the next snapshot in the same atomic write. A redelivered message whose id is
already reflected in the state is therefore not applied again; its recorded outputs are returned
instead, so nothing downstream is lost::

    table = StateTable(open_store("sqlite:///s.db", namespace="app"), codec)
    entry = table.entry(spec, "a")
    outs = entry.outputs_for("v-1-0")          # None: not applied yet
    ...
    table.applied(spec, "a", entry, "v-1-0", save=True, outputs=b"...")

With ``store=None`` nothing is durable: no id is ever redelivered into a later process, so
``applied`` records nothing and callers may skip it (and ``outputs_for``) altogether.
"""

from __future__ import annotations

import time
from typing import Any

from nfbuilder.codec import Codec
from nfbuilder.runtime.state.store import Fence, Save, StateStore
from nfbuilder.topology import StateSpec


class Entry:
    """A live state object with its applied-id bookkeeping."""

    __slots__ = ("at", "held", "obj", "persisted", "pending")

    def __init__(self, obj: Any, persisted: dict[str, bytes],
                 at: dict[str, float] | None = None) -> None:
        self.obj = obj
        self.persisted = persisted  # id -> outputs, reflected in the stored snapshot
        self.pending: dict[str, bytes] = {}  # applied in memory since the last snapshot
        self.at: dict[str, float] = at or {}  # id -> when it was applied (or saved)
        #: a save of it waits for the next :meth:`StateTable.flush` (batch mode): what is stored
        #: is older than ``obj`` (read on every message, so a flag, not a table look-up)
        self.held = False

    def outputs_for(self, msg_id: str) -> bytes | None:
        """The recorded outputs of ``msg_id`` if its effect is already in this state."""
        found = self.pending.get(msg_id)
        return found if found is not None else self.persisted.get(msg_id)


class StateTable:
    """All state entries of a process; ``store=None`` keeps them in memory only."""

    def __init__(self, store: StateStore | None, codec: Codec,
                 fence: Fence | None = None) -> None:
        self.store = store
        self.codec = codec
        #: the claim this process's saves are made under (a state vertex partition's)
        self.fence = fence
        self._by_name: dict[str, dict[str, Entry]] = {}  # state name -> key -> entry
        #: saves held until :meth:`flush` (batch mode): (state, key) -> (spec, entry)
        self._dirty: dict[tuple[str, str], tuple[StateSpec, Entry]] | None = None

    def defer_saves(self) -> None:
        """From now on a save waits for :meth:`flush`: a batch of messages costs one save per
        key it changed, not one per message (what a batch-mode vertex calls at its EOT)."""
        if self._dirty is None:
            self._dirty = {}

    def flush(self) -> None:
        """Persist every save held since the last flush (each key once, with all the ids and
        outputs it took meanwhile)."""
        dirty, store = self._dirty, self.store
        if not dirty or store is None:
            return
        self._dirty = {}
        held = list(dirty.items())
        for _, (_, entry) in held:
            entry.held = False
        dumps = self.codec.dumps
        store.save_many([Save(spec.name, key, dumps(entry.obj), list(entry.pending),
                              entry.pending) for (_, key), (spec, entry) in held],
                        fence=self.fence)
        for _, (_, entry) in held:
            self._saved(store, entry)

    @property
    def durable(self) -> bool:
        """Whether applied ids and outputs are recorded (a store was given)."""
        return self.store is not None

    def entries(self, state_name: str) -> dict[str, Entry]:
        """The live ``{key: Entry}`` of one state, for lookups on the per-message path:
        ``table.entries("s").get(key) or table.entry(spec, key)``."""
        return self._by_name.setdefault(state_name, {})

    def entry(self, spec: StateSpec, key: str) -> Entry:
        """The entry of ``key``, made (or loaded from the store) on first use."""
        entries = self.entries(spec.name)
        found = entries.get(key)
        if found is None:
            snap = self.store.load(spec.name, key) if self.store is not None else None
            if snap is None:
                found = Entry(spec.state_class(), {})
            else:
                outputs = dict(snap.outputs)
                persisted = {i: outputs.get(i, b"") for i in snap.applied_ids}
                at = dict(zip(snap.applied_ids, snap.applied_at, strict=False))
                found = Entry(self.codec.loads(snap.data), persisted, at)
            entries[key] = found
        return found

    def applied(
        self, spec: StateSpec, key: str, entry: Entry, msg_id: str, save: bool, outputs: bytes
    ) -> None:
        """Record that ``msg_id`` changed ``entry`` (producing ``outputs``); persist the state
        with every pending id and its outputs when ``save``. No effect without a store."""
        store = self.store
        if store is None:
            return
        now = time.time()
        if msg_id:
            pending = entry.pending
            pending[msg_id] = outputs
            entry.at[msg_id] = now
            # a step that never saves must not grow without bound: keep what the store would
            # keep of these ids (the newest ``id_window`` and those within the retention)
            if len(pending) > store.id_window:
                _trim(pending, entry.at, store.id_window, now - store.id_retention_s)
        if save:
            if self._dirty is not None:
                self._dirty[(spec.name, key)] = (spec, entry)
                entry.held = True
            else:
                self._persist(store, spec, key, entry)

    def _persist(self, store: StateStore, spec: StateSpec, key: str, entry: Entry) -> None:
        store.save(spec.name, key, self.codec.dumps(entry.obj), list(entry.pending),
                   entry.pending, fence=self.fence)
        self._saved(store, entry)

    @staticmethod
    def _saved(store: StateStore, entry: Entry) -> None:
        """``entry``'s pending ids are in the store now."""
        entry.persisted.update(entry.pending)
        entry.pending = {}
        _trim(entry.persisted, entry.at, store.id_window, time.time() - store.id_retention_s)

    def keys(self, state_name: str) -> list[str]:
        return list(self._by_name.get(state_name, ()))

    def get(self, state_name: str, key: str) -> Any:
        """The live object (for tests and the in-process harness)."""
        return self._by_name[state_name][key].obj


def _trim(ids: dict[str, bytes], at: dict[str, float], window: int, horizon: float) -> None:
    """Drop the oldest of ``ids`` (dicts keep insertion order) while more than ``window`` are
    kept and the oldest was applied before ``horizon``: the store's rule, applied in memory."""
    while len(ids) > window:
        oldest = next(iter(ids))
        if at.get(oldest, 0.0) > horizon:
            return
        del ids[oldest]
        at.pop(oldest, None)
