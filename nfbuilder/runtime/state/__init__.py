"""Durable keyed state for stateful steps: SQLite, Redis and in-memory stores.

Example::

    from nfbuilder.runtime.state import open_store

    store = open_store("sqlite:///state.db", namespace="word-count")
    snap = store.load("counts", "apple")  # None until the first save

Set ``NFBUILDER_STATE_KEY`` so that SQLite and Redis stores sign what they write and refuse a
snapshot nobody with the key wrote (:mod:`.signing`) before it is unpickled.
"""

from nfbuilder.runtime.state.signing import KEY_ENV, StateIntegrityError
from nfbuilder.runtime.state.store import (
    DEFAULT_ID_RETENTION_S,
    DEFAULT_ID_WINDOW,
    DEFAULT_TIMEOUT_S,
    FencedError,
    Save,
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
    "KEY_ENV",
    "FencedError",
    "Save",
    "Snapshot",
    "StateIntegrityError",
    "StateStore",
    "StateStoreError",
    "mask_url",
    "merge_ids",
    "open_store",
]
