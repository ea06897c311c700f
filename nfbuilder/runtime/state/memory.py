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
import time
from collections.abc import Mapping, Sequence

from nfbuilder.runtime.state.store import (
    DEFAULT_ID_RETENTION_S,
    DEFAULT_ID_WINDOW,
    Fence,
    Save,
    Snapshot,
    StateStoreError,
    fenced,
    merge_ids,
    timed_snapshot,
)


class MemoryStore:
    """A :class:`~nfbuilder.runtime.state.store.StateStore` kept in a dict of this process."""

    durable = False
    url_for_display = "memory://"

    def __init__(self, *, namespace: str, id_window: int = DEFAULT_ID_WINDOW,
                 id_retention_s: float = DEFAULT_ID_RETENTION_S) -> None:
        self.namespace = namespace
        self.id_window = id_window
        self.id_retention_s = id_retention_s
        # (state, key) -> (data, count window, {id: (outputs, saved at)} oldest first)
        self._snapshots: dict[tuple[str, str], tuple[bytes, tuple[str, ...],
                                                      dict[str, tuple[bytes, float]]]] = {}
        self._fences: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self._closed = False

    def load(self, state_name: str, key: str) -> Snapshot | None:
        with self._lock:
            self._check_open()
            found = self._snapshots.get((state_name, key))
            if found is None:
                return None
            data, window, rows = found
            return timed_snapshot(data, window, ((i, o, t) for i, (o, t) in rows.items()))

    def save_many(self, saves: Sequence[Save], fence: Fence | None = None) -> None:
        for save in saves:  # each key atomically, as save() does it
            self.save(*save, fence=fence)

    def save(
        self,
        state_name: str,
        key: str,
        data: bytes,
        applied_ids: Sequence[str],
        outputs: Mapping[str, bytes] | None = None,
        fence: Fence | None = None,
    ) -> None:
        with self._lock:
            self._check_open()
            if fence is not None and self._fences.get((state_name, fence[0])) != fence[1]:
                raise fenced(self.url_for_display, state_name, key, fence)
            _, old, rows = self._snapshots.get((state_name, key), (b"", (), {}))
            window = merge_ids(old, applied_ids, self.id_window, known=rows)  # rows hold old
            now = time.time()
            got = outputs or {}
            for msg_id in dict.fromkeys(applied_ids):
                rows.pop(msg_id, None)  # saved again: to the newest position
                rows[msg_id] = (bytes(got.get(msg_id, b"")), now)
            horizon = now - self.id_retention_s
            keep: set[str] | None = None  # the window as a set, made once a row has expired
            expired = []
            for msg_id, (_, at) in rows.items():
                if at > horizon:
                    break  # the rest is newer
                if keep is None:
                    keep = set(window)
                if msg_id not in keep:
                    expired.append(msg_id)
            for msg_id in expired:
                del rows[msg_id]
            self._snapshots[(state_name, key)] = (bytes(data), window, rows)

    def claim(self, state_name: str, partition: int) -> int:
        with self._lock:
            self._check_open()
            epoch = self._fences.get((state_name, partition), 0) + 1
            self._fences[(state_name, partition)] = epoch
            return epoch

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
