"""`memory://`: a dict-backed state store with no durability.

For unit tests and for users who explicitly opt out of persistence; state is lost when the
process exits, so ``durable`` is False and callers should say so.

Example::

    store = MemoryStore(namespace="app")
    store.save("counts", "k", b"1", ["m-1-0"])
    store.load("counts", "k")  # Snapshot(data=b'1', applied_ids=('m-1-0',))
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

from nfbuilder.runtime.state.store import (
    DEFAULT_ID_WINDOW,
    Snapshot,
    StateStoreError,
    merge_ids,
)


class MemoryStore:
    """A :class:`~nfbuilder.runtime.state.store.StateStore` kept in a dict of this process."""

    durable = False
    url_for_display = "memory://"

    def __init__(self, *, namespace: str, id_window: int = DEFAULT_ID_WINDOW) -> None:
        self.namespace = namespace
        self.id_window = id_window
        self._snapshots: dict[tuple[str, str], Snapshot] = {}
        self._lock = threading.Lock()
        self._closed = False

    def load(self, state_name: str, key: str) -> Snapshot | None:
        with self._lock:
            self._check_open()
            return self._snapshots.get((state_name, key))

    def save(
        self,
        state_name: str,
        key: str,
        data: bytes,
        applied_ids: Sequence[str],
        outputs: Mapping[str, bytes] | None = None,
    ) -> None:
        with self._lock:
            self._check_open()
            old = self._snapshots.get((state_name, key))
            ids = merge_ids(old.applied_ids if old else (), applied_ids, self.id_window)
            merged = {**(old.outputs if old else {}), **(outputs or {})}
            kept = {i: merged[i] for i in ids if i in merged}
            self._snapshots[(state_name, key)] = Snapshot(bytes(data), ids, kept)

    def count(self) -> int:
        with self._lock:
            self._check_open()
            return len(self._snapshots)

    def clear(self) -> int:
        with self._lock:
            self._check_open()
            n = len(self._snapshots)
            self._snapshots.clear()
            return n

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._snapshots.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise StateStoreError(
                "state store memory:// was used after close(); open a new store with open_store()"
            )
