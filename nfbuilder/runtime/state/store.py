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
A snapshot keeps the ids of the messages applied to it for as long as they can be redelivered:
every id younger than ``id_retention_s`` (default 120 s), and at least the newest ``id_window``
(default 1024) whatever their age. Numaflow redelivers a message that was read but not
acknowledged when its pod dies, but only after JetStream's ``ackWait`` (60 s by default), while
newer messages keep flowing and are applied meanwhile. A count alone cannot cover that: a key
receiving more than ``id_window / ackWait`` messages a second (17/s with the defaults) would push
the redelivered id out before it came back and apply it twice. Retention by time covers any rate,
for ``id_retention_s >= ackWait`` (2 x the default here); its memory is what the ids and their
recorded outputs of ``id_retention_s`` seconds take: per key, about ``rate x id_retention_s x
(60 bytes + the outputs' size)``, e.g. 100 messages/s -> 12,000 ids, ~0.7 MB plus outputs.

Rule (identical in every store): a save records each of its ids with the save's time (an id saved
again moves to the newest position); kept are the newest ``id_window`` ids (:func:`merge_ids`) and
every id saved less than ``id_retention_s`` ago (``id_retention_s=0``: the count alone). The ids
are stored a record per id (Redis) or a row per save of a key (SQLite), so a save costs its own
ids plus the expired ones, not the whole retention. Retrying the same ``save`` leaves the same
ids (idempotent), which the Redis store relies on when a reply is lost after the write happened.

Trust
-----
Snapshots and recorded outputs are pickles, and loading a pickle runs code: the store must be
trusted. With ``NFBUILDER_STATE_KEY`` set, the durable stores sign every blob for its record and
refuse one that does not check before it is unpickled (:mod:`.signing`), so write access to the
database no longer means running code in the vertices; it can still delete records, put back an
older blob of the same record or rewrite the applied ids. Without the key, opening a store warns.

Example::

    store = open_store("sqlite:///state.db", namespace="word-count")
    store.save("counts", "apple", b"...", ["map-7-0"])
    snap = store.load("counts", "apple")
    assert snap is not None and snap.contains("map-7-0")
    store.close()
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Container, Iterable, Mapping, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

import attrs

DEFAULT_ID_WINDOW = 1024
DEFAULT_ID_RETENTION_S = 120.0  # 2 x JetStream's default ackWait
DEFAULT_TIMEOUT_S = 30.0

log = logging.getLogger("nfbuilder.state")

_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


class StateStoreError(Exception):
    """A state store could not be opened, read or written.

    The message names the store (password masked), what failed and what to do, e.g.
    ``cannot reach redis://:***@redis:6379/0 ...: is redis-server running at redis:6379?``
    """


class FencedError(StateStoreError):
    """A save by a process whose claim on its partition is no longer the newest: another process
    (a replacement pod) took the partition over. The process must stop, so that numa redelivers
    its unacknowledged messages to the new owner."""


#: ``(partition, epoch)``: the claim a save is made under (see :meth:`StateStore.claim`)
Fence = tuple[int, int]


def _to_tuple(ids: Iterable[str]) -> tuple[str, ...]:
    return tuple(ids)


def _to_floats(times: Iterable[float]) -> tuple[float, ...]:
    return tuple(times)


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
    #: when each applied id was saved (epoch seconds; 0.0 when the store did not record it)
    applied_at: tuple[float, ...] = attrs.field(default=(), converter=_to_floats, eq=False,
                                                repr=False)
    # A set for O(1) lookups: contains() is called once per incoming message.
    _id_set: frozenset[str] = attrs.field(init=False, repr=False, eq=False)

    @_id_set.default
    def _make_id_set(self) -> frozenset[str]:
        return frozenset(self.applied_ids)

    def contains(self, msg_id: str) -> bool:
        """True if the message `msg_id` was already applied to this snapshot's state."""
        return msg_id in self._id_set


class Save(NamedTuple):
    """The arguments of one :meth:`StateStore.save`, for :meth:`StateStore.save_many`."""

    state_name: str
    key: str
    data: bytes
    applied_ids: Sequence[str]
    outputs: Mapping[str, bytes] | None = None


@runtime_checkable
class StateStore(Protocol):
    """Where stateful steps persist their per-key snapshots. Open one with :func:`open_store`."""

    url_for_display: str
    """The store's URL with any password replaced by ``***``."""
    durable: bool
    """False for ``memory://``: callers warn that state does not survive a restart."""
    id_window: int
    id_retention_s: float

    def load(self, state_name: str, key: str) -> Snapshot | None:
        """The last saved snapshot of (state_name, key), or None if it was never saved."""
        ...

    def claim(self, state_name: str, partition: int) -> int:
        """Take ``partition`` of ``state_name`` over: a new epoch, greater than every earlier
        claim's. Saves made under an older epoch are refused from now on (fencing)."""
        ...

    def save(
        self,
        state_name: str,
        key: str,
        data: bytes,
        applied_ids: Sequence[str],
        outputs: Mapping[str, bytes] | None = None,
        fence: Fence | None = None,
    ) -> None:
        """Atomically replace the data, merge `applied_ids` into the id window and keep the
        `outputs` of those ids (dropping the outputs of ids that fall out of the window).

        With ``fence=(partition, epoch)`` the save is refused (:class:`FencedError`, nothing
        written) unless ``epoch`` is still the partition's newest claim.

        Returns only once the write is durable in the store; raises StateStoreError otherwise.
        Safe to retry with the same arguments.
        """
        ...

    def save_many(self, saves: Sequence[Save], fence: Fence | None = None) -> None:
        """Every one of ``saves`` as :meth:`save` does it, each key atomically (SQLite: all of
        them in one transaction, one commit for a batch). What a batch-mode state vertex calls
        at the end of a batch."""
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


def merge_ids(old: Iterable[str], new: Iterable[str], window: int,
              known: Container[str] | None = None) -> tuple[str, ...]:
    """The count window after appending `new` to `old`: the newest ``window`` ids, an id that
    appears twice kept at its newest position. ``known``: a container holding (at least) every
    id of ``old``, to tell without a walk over ``old`` that none of ``new`` is in it.

    Example::

        merge_ids(["a", "b"], ["b", "c"], 2)  # ("b", "c")
    """
    old, new = list(old), list(new)
    combined = old + new
    fresh = set(new)
    if len(fresh) == len(new) and (fresh.isdisjoint(old) if known is None
                                   else not any(map(known.__contains__, fresh))):
        # the usual save: ids not seen before (``old``, a window, never repeats one): no
        # Python-level walk over the window, which is most of a save's CPU otherwise
        return tuple(combined[-window:])
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


def timed_snapshot(
    data: bytes, window: Sequence[str], rows: Iterable[tuple[str, bytes, float]]
) -> Snapshot:
    """The snapshot of a store that keeps the count ``window`` (oldest first) and one ``(id,
    outputs, saved at)`` row per id kept (oldest first): the ids kept by time only, then the
    window; a window id without a row counts as saved at 0."""
    in_window = set(window)
    saved = {msg_id: (out, at) for msg_id, out, at in rows}
    older = [msg_id for msg_id in saved if msg_id not in in_window]
    ids = [*older, *window]
    at = [saved[i][1] if i in saved else 0.0 for i in ids]
    outputs = {i: saved[i][0] for i in ids if i in saved}
    return Snapshot(data, ids, outputs, at)


def fenced(shown: str, state_name: str, key: str, fence: Fence) -> FencedError:
    """The refusal of a save under a stale claim."""
    partition, epoch = fence
    return FencedError(
        f"state store {shown}: save of state {state_name!r} key {key!r} refused: partition "
        f"{partition} was claimed by a newer process (this one holds epoch {epoch}); stopping so "
        "that the new owner gets the unacknowledged messages"
    )


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
    id_retention_s: float = DEFAULT_ID_RETENTION_S,
    timeout: float = DEFAULT_TIMEOUT_S,
    environ: Mapping[str, str] | None = None,
) -> StateStore:
    """Open the state store named by `url`, keeping `namespace` (the app) apart from others.

    `timeout` bounds how long one load/save may keep retrying (Redis reconnects) or waiting for
    a lock (SQLite) before StateStoreError is raised. SQLite and Redis stores sign their
    blobs with ``NFBUILDER_STATE_KEY``, read here from ``environ`` (default: the process's; see
    Trust above); without it they warn.

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
    if not id_retention_s >= 0:
        raise StateStoreError(
            f"state store {shown}: id_retention_s must be >= 0 seconds, got {id_retention_s}; "
            f"use at least the ISB's ackWait (default {DEFAULT_ID_RETENTION_S:g})"
        )
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "memory":  # nothing outside this process can write it: nothing to sign
        from nfbuilder.runtime.state.memory import MemoryStore

        return MemoryStore(namespace=namespace, id_window=id_window,
                           id_retention_s=id_retention_s)
    from nfbuilder.runtime.state.signing import KEY_ENV, state_key

    key = state_key(os.environ if environ is None else environ)
    store: StateStore
    if scheme == "sqlite":
        from nfbuilder.runtime.state.sqlite import SqliteStore

        store = SqliteStore.open(url, namespace=namespace, id_window=id_window,
                                 id_retention_s=id_retention_s, timeout=timeout, signing_key=key)
    elif scheme in ("redis", "rediss"):
        from nfbuilder.runtime.state.redis_store import RedisStore

        store = RedisStore.open(url, namespace=namespace, id_window=id_window,
                                id_retention_s=id_retention_s, timeout=timeout, signing_key=key)
    else:
        raise StateStoreError(
            f"unknown state store URL {shown!r}: use sqlite:///path.db, "
            f"redis://[user:password@]host:port/db, rediss://... or memory://"
        )
    if key is None:
        log.warning(
            "state store %s: %s is not set, so snapshots are trusted without a check: whoever "
            "can write the store can run code in this process when a snapshot is loaded; set "
            "%s (e.g. from a Kubernetes Secret) to sign them", store.url_for_display, KEY_ENV,
            KEY_ENV,
        )
    return store
