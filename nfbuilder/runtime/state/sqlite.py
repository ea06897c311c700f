"""`sqlite:///path.db`: the embedded state store (default of the local engine).

A row per (namespace, state name, key) holds the snapshot bytes, a row per applied message id
its outputs and when it was saved; a save writes the snapshot and its ids in one transaction.
The ids' rows in insertion order are the count window (the newest ``id_window``); a file written
before that kept the window as a JSON list in the snapshot's row, read as such until its next
save. The file is in
WAL mode with a busy timeout, so several processes (one writer per partition, each with its own
keys) can share it: a writer waits for another's short transaction instead of failing.
``synchronous=NORMAL``: in WAL mode a committed save survives a crash of the process (what the
local engine restarts from); only an OS crash or power loss may lose the newest commits.
``data`` and ``outputs`` are signed with ``NFBUILDER_STATE_KEY`` when it is set (see
:mod:`.signing`): anyone who can write the file must not be able to run code in the vertices.

Example::

    store = SqliteStore.open("sqlite:///.nfbuilder/state.db", namespace="app")
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from nfbuilder.runtime.state.signing import Seal
from nfbuilder.runtime.state.store import (
    DEFAULT_ID_RETENTION_S,
    DEFAULT_ID_WINDOW,
    DEFAULT_TIMEOUT_S,
    Fence,
    Save,
    Snapshot,
    StateStoreError,
    fenced,
    timed_snapshot,
)

_PREFIX = "sqlite:///"
# WAL pages between automatic checkpoints (SQLite's default: 1000). A batch rewrites the same
# index pages of its keys: a checkpoint every 4000 copies each of them once for more batches,
# and syncs the file a quarter as often (a tenth of a save's CPU); the WAL file grows to ~16 MB.
_CHECKPOINT_PAGES = 4000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nfbuilder_state (
    namespace  TEXT NOT NULL,
    state_name TEXT NOT NULL,
    key        TEXT NOT NULL,
    data       BLOB NOT NULL,
    ids        TEXT NOT NULL,
    PRIMARY KEY (namespace, state_name, key)
);
CREATE TABLE IF NOT EXISTS nfbuilder_outputs (
    namespace  TEXT NOT NULL,
    state_name TEXT NOT NULL,
    key        TEXT NOT NULL,
    msg_id     TEXT NOT NULL,
    outputs    BLOB NOT NULL,
    at         REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (namespace, state_name, key, msg_id)
);
"""
# Each applied id has a row with its outputs and the time it was saved at (``at``); rowid order
# is the order they were applied in (a saved-again id is replaced: the newest position). So a
# save writes only its own ids and deletes only those out of the count window and expired,
# whatever the retention holds. The ``ids`` column is empty (a JSON window in older files).
_FENCES = """CREATE TABLE IF NOT EXISTS nfbuilder_fences (
    namespace  TEXT NOT NULL,
    state_name TEXT NOT NULL,
    partition  INTEGER NOT NULL,
    epoch      INTEGER NOT NULL,
    PRIMARY KEY (namespace, state_name, partition)
)"""
_CLAIM = """INSERT INTO nfbuilder_fences VALUES (?, ?, ?, 1)
ON CONFLICT (namespace, state_name, partition) DO UPDATE SET epoch = epoch + 1"""
_EPOCH = ("SELECT epoch FROM nfbuilder_fences"
          " WHERE namespace = ? AND state_name = ? AND partition = ?")
_AT_COLUMN = "ALTER TABLE nfbuilder_outputs ADD COLUMN at REAL NOT NULL DEFAULT 0"
_AT_INDEX = """CREATE INDEX IF NOT EXISTS nfbuilder_outputs_at
ON nfbuilder_outputs (namespace, state_name, key, at)"""
# a key's rows in rowid order (every index ends with the rowid): the window's edge, cheaply
_KEY_INDEX = """CREATE INDEX IF NOT EXISTS nfbuilder_outputs_key
ON nfbuilder_outputs (namespace, state_name, key)"""

_SELECT = "SELECT data, ids FROM nfbuilder_state WHERE namespace = ? AND state_name = ? AND key = ?"
_SELECT_OUTPUTS = (
    "SELECT msg_id, outputs, at FROM nfbuilder_outputs"
    " WHERE namespace = ? AND state_name = ? AND key = ? ORDER BY rowid"
)
_PUT_OUTPUT = (
    "INSERT OR REPLACE INTO nfbuilder_outputs (namespace, state_name, key, msg_id, outputs, at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
# the expired rows: saved at or before the horizon, and older than the window's oldest row
# (the ``id_window``-th newest; none while a key has fewer rows)
_DROP_EXPIRED = (
    "DELETE FROM nfbuilder_outputs WHERE namespace = ? AND state_name = ? AND key = ?"
    " AND at <= ? AND rowid < (SELECT rowid FROM nfbuilder_outputs"
    " WHERE namespace = ? AND state_name = ? AND key = ? ORDER BY rowid DESC LIMIT 1 OFFSET ?)"
)
_UPSERT = """
INSERT INTO nfbuilder_state (namespace, state_name, key, data, ids) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (namespace, state_name, key) DO UPDATE SET data = excluded.data, ids = excluded.ids
"""


def _last_first(ids: Sequence[str]) -> list[str]:
    """``ids`` once each, in the order of their last occurrence (``merge_ids``'s rule)."""
    return list(reversed(dict.fromkeys(reversed(ids))))


def sqlite_path(url: str) -> Path:
    """The database file named by a ``sqlite:///`` URL, resolved against the current directory.

    Example::

        sqlite_path("sqlite:////var/lib/app/state.db")  # PosixPath('/var/lib/app/state.db')
    """
    if not url.startswith(_PREFIX) or len(url) == len(_PREFIX):
        raise StateStoreError(
            f"invalid SQLite state store URL {url!r}: use sqlite:///relative/path.db or "
            f"sqlite:////absolute/path.db (three slashes, then the path)"
        )
    return Path(url[len(_PREFIX) :]).resolve()


class SqliteStore:
    """A :class:`~nfbuilder.runtime.state.store.StateStore` in one SQLite file."""

    durable = True

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        url: str,
        path: Path,
        namespace: str,
        id_window: int = DEFAULT_ID_WINDOW,
        id_retention_s: float = DEFAULT_ID_RETENTION_S,
        signing_key: bytes | None = None,
    ) -> None:
        self.url_for_display = url
        self.path = path
        self.namespace = namespace
        self.id_window = id_window
        self.id_retention_s = id_retention_s
        self._conn = conn
        self._seal = Seal(signing_key, shown=url, namespace=namespace)
        # One connection shared by the threads of a step server; sqlite3 needs it serialized.
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        url: str,
        *,
        namespace: str,
        id_window: int = DEFAULT_ID_WINDOW,
        id_retention_s: float = DEFAULT_ID_RETENTION_S,
        timeout: float = DEFAULT_TIMEOUT_S,
        signing_key: bytes | None = None,
    ) -> SqliteStore:
        """Open (creating the file, its parent directories and the table) the store at `url`;
        with `signing_key` its blobs are signed and checked (:class:`.signing.Seal`)."""
        path = sqlite_path(url)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise StateStoreError(
                f"cannot open SQLite state store {url} (file {path}): {exc}; "
                f"check that the directory exists or can be created and is writable"
            ) from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            mode = _enable_wal(conn, timeout)
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"journal_mode is {mode!r}, WAL was refused")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA wal_autocheckpoint = {_CHECKPOINT_PAGES}")
            conn.executescript(_SCHEMA)
            columns = [r[1] for r in conn.execute("PRAGMA table_info(nfbuilder_outputs)")]
            if "at" not in columns:  # a file written before ids had times
                try:
                    conn.execute(_AT_COLUMN)
                except sqlite3.OperationalError as exc:
                    if "duplicate column" not in str(exc):  # else: another process added it
                        raise
            conn.execute(_AT_INDEX)
            conn.execute(_KEY_INDEX)
            conn.execute(_FENCES)
        except sqlite3.Error as exc:
            conn.close()
            raise StateStoreError(
                f"cannot use SQLite state store {url} (file {path}): {exc}; "
                f"check that it is a writable SQLite database on a local disk (WAL mode needs one)"
            ) from exc
        return cls(conn, url=url, path=path, namespace=namespace, id_window=id_window,
                   id_retention_s=id_retention_s, signing_key=signing_key)

    def load(self, state_name: str, key: str) -> Snapshot | None:
        with self._lock:
            try:
                row = self._conn.execute(_SELECT, (self.namespace, state_name, key)).fetchone()
            except sqlite3.Error as exc:
                raise self._error("load", state_name, key, exc) from exc
            if row is None:
                return None
            try:
                rows = self._conn.execute(_SELECT_OUTPUTS, (self.namespace, state_name, key))
                timed = [(msg_id, bytes(blob), float(at)) for msg_id, blob, at in rows]
            except sqlite3.Error as exc:
                raise self._error("load", state_name, key, exc) from exc
        check = self._seal.check
        # an older file's count window is the JSON list in the snapshot's row
        window = json.loads(row[1]) if row[1] else [i for i, _, _ in timed[-self.id_window:]]
        return timed_snapshot(check(bytes(row[0]), state_name, key), window,
                              [(i, check(b, state_name, key, i), at) for i, b, at in timed])

    def save(
        self,
        state_name: str,
        key: str,
        data: bytes,
        applied_ids: Sequence[str],
        outputs: Mapping[str, bytes] | None = None,
        fence: Fence | None = None,
    ) -> None:
        self.save_many([Save(state_name, key, data, applied_ids, outputs)], fence)

    def save_many(self, saves: Sequence[Save], fence: Fence | None = None) -> None:
        if not saves:
            return
        # signed and put in rows before the write lock is taken, to keep the transaction short.
        # One statement per kind for the whole batch, every row in before any expired one goes:
        # what one save after another leaves (a later save of a key only moves its window's
        # edge further, so deleting once after the last finds what deleting after each does)
        seal, namespace = self._seal, self.namespace
        idents = list(dict.fromkeys((namespace, s.state_name, s.key) for s in saves))
        states, outputs = [], []
        for save in saves:
            ident = (namespace, save.state_name, save.key)
            states.append((*ident, seal.sign(save.data, save.state_name, save.key), ""))
            # in the order of their last application: an id applied twice is newest
            ids = _last_first(save.applied_ids)
            blobs = seal.sign_outputs(save.outputs or {}, ids, save.state_name, save.key)
            outputs += [(*ident, msg_id, blobs[msg_id]) for msg_id in ids]
        first = saves[0]
        with self._lock:
            conn = self._conn
            try:
                # IMMEDIATE takes the write lock before reading the old ids, so no other
                # process can slip a save for these keys in between (no lost id merge).
                conn.execute("BEGIN IMMEDIATE")
                if fence is not None:
                    for name in dict.fromkeys(s.state_name for s in saves):
                        row = conn.execute(_EPOCH, (self.namespace, name, fence[0])).fetchone()
                        if row is None or row[0] != fence[1]:
                            conn.execute("ROLLBACK")
                            raise fenced(self.url_for_display, name, first.key, fence)
                now = time.time()
                horizon, edge = now - self.id_retention_s, self.id_window - 1
                conn.executemany(_UPSERT, states)
                conn.executemany(_PUT_OUTPUT, [(*row, now) for row in outputs])
                conn.executemany(_DROP_EXPIRED, [(*i, horizon, *i, edge) for i in idents])
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                try:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the connection itself is unusable; its transaction died with it
                raise self._error("save", first.state_name, first.key, exc) from exc

    def claim(self, state_name: str, partition: int) -> int:
        ident = (self.namespace, state_name, partition)
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(_CLAIM, ident)
                epoch = int(conn.execute(_EPOCH, ident).fetchone()[0])
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise self._error("claim partition of", state_name, str(partition), exc) from exc
        return epoch

    def count(self) -> int:
        with self._lock:
            try:
                row = self._conn.execute(
                    "SELECT COUNT(*) FROM nfbuilder_state WHERE namespace = ?", (self.namespace,)
                ).fetchone()
            except sqlite3.Error as exc:
                raise self._error("count", "*", "*", exc) from exc
        return int(row[0])

    def clear(self) -> int:
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                n = conn.execute("DELETE FROM nfbuilder_state WHERE namespace = ?",
                                 (self.namespace,)).rowcount
                conn.execute("DELETE FROM nfbuilder_outputs WHERE namespace = ?",
                             (self.namespace,))
                conn.execute("DELETE FROM nfbuilder_fences WHERE namespace = ?",
                             (self.namespace,))
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise self._error("clear", "*", "*", exc) from exc
        return int(n)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _error(self, action: str, state_name: str, key: str, exc: sqlite3.Error) -> StateStoreError:
        hint = (
            "another process held the database lock for longer than the timeout; "
            "check for a stuck process using the same file"
            if "locked" in str(exc) or "busy" in str(exc)
            else "check the file and the disk"
        )
        return StateStoreError(
            f"cannot {action} state {state_name!r} key {key!r} in SQLite state store "
            f"{self.url_for_display} (file {self.path}): {exc}; {hint}"
        )


def _enable_wal(conn: sqlite3.Connection, timeout: float) -> str:
    """Switch ``conn``'s database to WAL; returns the journal mode SQLite reports.

    SQLite can answer "database is locked" to the switch at once, without waiting for the busy
    timeout, while another process opens the same file (two partitions of a vertex starting
    together): retry until ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
