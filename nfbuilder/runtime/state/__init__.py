"""Durable keyed state for stateful steps: SQLite, Redis and in-memory stores.

Example::

    from nfbuilder.runtime.state import open_store

    store = open_store("sqlite:///state.db", namespace="word-count")
    snap = store.load("counts", "apple")  # None until the first save
"""

from nfbuilder.runtime.state.store import (
    DEFAULT_ID_RETENTION_S,
    DEFAULT_ID_WINDOW,
    DEFAULT_TIMEOUT_S,
    FencedError,
    Snapshot,
    StateStore,
    StateStoreError,
    mask_url,
    merge_ids,
    open_store,
)

__all__ = [
    "DEFAULT_ID_RETENTION_S",
    "DEFAULT_ID_WINDOW",
    "DEFAULT_TIMEOUT_S",
    "FencedError",
    "Snapshot",
    "StateStore",
    "StateStoreError",
    "mask_url",
    "merge_ids",
    "open_store",
]
