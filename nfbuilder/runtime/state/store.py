"""The keyed state store interface, its URLs and `open_store`.

A stateful step keeps one state object per (state name, partition key). When the user's
computation returns ``(output, True)`` the runtime calls :meth:`StateStore.save` with the
serialized state and the ids of the messages applied to it since the previous save. Both are
written in ONE atomic operation, so after a crash a redelivered message whose effect is already in
the stored snapshot is found in :attr:`Snapshot.applied_ids` and not applied a second time.

Store URLs::

    sqlite:///relative/path.db     relative to the current directory (SQLAlchemy's convention)
    sqlite:////absolute/path.db    i.e. "sqlite:///" + "/absolute/path.db"
    redis://[user:password@]host:port/db   (rediss:// for TLS)
    memory://                      no durability: for tests and explicit opt-out

The id window
-------------
A snapshot keeps only the newest ``id_window`` message ids (default 1024). That is enough because
an id only has to be recognised while its message can still be redelivered, and Numaflow only
redelivers messages that were read but not yet acknowledged. Per partition (so per key) those are
bounded by the vertex's in-flight limit, ``limits.concurrency + limits.readBatchSize``
(concurrency defaults to readBatchSize, 500, hence at most 1000 with defaults; ordered map vertices
process them one at a time but read ahead the same way). Every message older than the newest 1000
applied ones has been acknowledged and cannot come back. 1024 covers the default with some margin;
a vertex configured with larger limits must pass ``id_window >= concurrency + readBatchSize``.

Merging rule (identical in every store): the new ids are appended after the stored ones, an id
that appears twice is kept once at its newest position, and the list is cut to the newest
``id_window``. Retrying the same ``save`` therefore leaves exactly the same result (idempotent),
which the Redis store relies on when a reply is lost after the write happened.

Example::

    store = open_store("sqlite:///state.db", namespace="word-count")
    store.save("counts", "apple", b"...", ["map-7-0"])
    snap = store.load("counts", "apple")
    assert snap is not None and snap.contains("map-7-0")
    store.close()
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

import attrs

DEFAULT_ID_WINDOW = 1024
DEFAULT_TIMEOUT_S = 30.0

_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


class StateStoreError(Exception):
    """A state store could not be opened, read or written.

    The message names the store (password masked), what failed and what to do, e.g.
    ``cannot reach redis://:***@redis:6379/0 ...: is redis-server running at redis:6379?``
    """


def _to_tuple(ids: Iterable[str]) -> tuple[str, ...]:
    return tuple(ids)


@attrs.frozen
class Snapshot:
    """One key's persisted state and the ids of the messages whose effects it contains.

    Example::

        snap = Snapshot(data=b"3", applied_ids=("v-1-0", "v-2-0"))
        snap.contains("v-2-0")  # True
    """

    data: bytes
    applied_ids: tuple[str, ...] = attrs.field(converter=_to_tuple)
    #: per applied id still in the window, the outputs its message produced (opaque bytes), so
    #: a redelivered message can have its outputs re-emitted without being applied again
    outputs: Mapping[str, bytes] = attrs.field(factory=dict, eq=False, repr=False)
    # A set for O(1) lookups: contains() is called once per incoming message.
    _id_set: frozenset[str] = attrs.field(init=False, repr=False, eq=False)

    @_id_set.default
    def _make_id_set(self) -> frozenset[str]:
        return frozenset(self.applied_ids)

    def contains(self, msg_id: str) -> bool:
        """True if the message `msg_id` was already applied to this snapshot's state."""
        return msg_id in self._id_set


@runtime_checkable
class StateStore(Protocol):
    """Where stateful steps persist their per-key snapshots. Open one with :func:`open_store`."""

    url_for_display: str
    """The store's URL with any password replaced by ``***``."""
    durable: bool
    """False for ``memory://``: callers warn that state does not survive a restart."""
    id_window: int

    def load(self, state_name: str, key: str) -> Snapshot | None:
        """The last saved snapshot of (state_name, key), or None if it was never saved."""
        ...

    def save(
        self,
        state_name: str,
        key: str,
        data: bytes,
        applied_ids: Sequence[str],
        outputs: Mapping[str, bytes] | None = None,
    ) -> None:
        """Atomically replace the data, merge `applied_ids` into the id window and keep the
        `outputs` of those ids (dropping the outputs of ids that fall out of the window).

        Returns only once the write is durable in the store; raises StateStoreError otherwise.
        Safe to retry with the same arguments.
        """
        ...

    def count(self) -> int:
        """How many (state, key) snapshots this namespace holds: what a run resumes."""
        ...

    def clear(self) -> int:
        """Delete every snapshot of this namespace (a fresh start); returns how many."""
        ...

    def close(self) -> None:
        """Release connections. The store must not be used afterwards."""
        ...


def merge_ids(old: Iterable[str], new: Iterable[str], window: int) -> tuple[str, ...]:
    """The id window after appending `new` to `old` (see the module docstring for the rule).

    Example::

        merge_ids(["a", "b"], ["b", "c"], 2)  # ("b", "c")
    """
    combined = [*old, *new]
    kept: list[str] = []
    seen: set[str] = set()
    # Walk from the newest id backwards: the first sighting of an id is its newest position.
    for msg_id in reversed(combined):
        if msg_id in seen:
            continue
        seen.add(msg_id)
        kept.append(msg_id)
        if len(kept) == window:
            break
    kept.reverse()
    return tuple(kept)


def mask_url(url: str) -> str:
    """`url` with its password (in the authority or a ``password=`` query field) as ``***``.

    Example::

        mask_url("redis://user:secret@host:6379/0")  # 'redis://user:***@host:6379/0'
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    # The userinfo ends at the last '@' before the query; searching that far (not just to the
    # first '/') still masks a password that contains an unescaped '/'.
    query_at = rest.find("?")
    at = rest.rfind("@", 0, query_at if query_at >= 0 else len(rest))
    if at >= 0 and ":" in rest[:at]:
        rest = f"{rest[: rest.index(':')]}:***{rest[at:]}"
    return scheme + sep + _QUERY_PASSWORD.sub(r"\1***", rest)


def open_store(
    url: str,
    *,
    namespace: str,
    id_window: int = DEFAULT_ID_WINDOW,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> StateStore:
    """Open the state store named by `url`, keeping `namespace` (the app) apart from others.

    `timeout` bounds how long one load/save may keep retrying (Redis reconnects) or waiting for
    a lock (SQLite) before StateStoreError is raised.

    Example::

        store = open_store("redis://localhost:6379/0", namespace="alerts")
    """
    shown = mask_url(url)
    if not namespace:
        raise StateStoreError(
            f"state store {shown}: namespace is empty; pass the application or pipeline name"
        )
    if id_window < 1:
        raise StateStoreError(
            f"state store {shown}: id_window must be >= 1, got {id_window}; "
            f"use at least concurrency + readBatchSize of the vertex (default {DEFAULT_ID_WINDOW})"
        )
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        from nfbuilder.runtime.state.sqlite import SqliteStore

        return SqliteStore.open(url, namespace=namespace, id_window=id_window, timeout=timeout)
    if scheme in ("redis", "rediss"):
        from nfbuilder.runtime.state.redis_store import RedisStore

        return RedisStore.open(url, namespace=namespace, id_window=id_window, timeout=timeout)
    if scheme == "memory":
        from nfbuilder.runtime.state.memory import MemoryStore

        return MemoryStore(namespace=namespace, id_window=id_window)
    raise StateStoreError(
        f"unknown state store URL {shown!r}: use sqlite:///path.db, "
        f"redis://[user:password@]host:port/db, rediss://... or memory://"
    )
