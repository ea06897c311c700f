"""`sqlite:///path.db`: the embedded state store (default of the local engine).

A row per (namespace, state name, key) holds the snapshot bytes and when it was last saved; a
row per save of a key holds the ids that save applied (a JSON list), each id's outputs and when
it was saved. A save writes the snapshot and its row in one transaction, so one batch costs a
row per key it touched, not a row per message. Rows in rowid order are the order of application
(an id saved again counts at its newest row), and the count window is the newest ``id_window``
ids over them: a save deletes the key's rows whose ids were all saved again later, and those
holding only ids older than the window and saved before the retention horizon; a load drops the
ids of the row straddling the window's edge that such a delete would have dropped. A load reads
the snapshot and its rows in one read transaction. The store keeps, per key it saved, where the
window's edge lies (checked against the file at each save, so another process saving the key is
seen), so a save reads none of the ids it does not write.

A file written by the release before (a row per applied id, in ``nfbuilder_outputs``) is
converted when it is opened, in one transaction, a key at a time: each key's consecutive ids
saved at the same time become one row. There is no way back: in every file of this layout the
old table's name is a view, on which the release before fails at open (rather than run without
the applied ids). A file older still keeps its count window as a JSON list in the snapshot's
row, read as such until its next save. The file is in
WAL mode with a busy timeout, so several processes (one writer per partition, each with its own
keys) can share it: a writer waits for another's short transaction instead of failing.
``synchronous=NORMAL``: in WAL mode a committed save survives a crash of the process (what the
local engine restarts from); only an OS crash or power loss may lose the newest commits.
``data`` and each id's outputs are signed with ``NFBUILDER_STATE_KEY`` when it is set (see
:mod:`.signing`): anyone who can write the file must not be able to run code in the vertices.

Example::

    store = SqliteStore.open("sqlite:///.nfbuilder/state.db", namespace="app")
"""

from __future__ import annotations

import itertools
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
    log,
    timed_snapshot,
)

_PREFIX = "sqlite:///"
# WAL pages between automatic checkpoints (SQLite's default: 1000). A batch rewrites the same
# index pages of its keys: a checkpoint every 4000 copies each of them once for more batches,
# and syncs the file a quarter as often; the WAL file grows to ~16 MB.
_CHECKPOINT_PAGES = 4000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nfbuilder_state (
    namespace  TEXT NOT NULL,
    state_name TEXT NOT NULL,
    key        TEXT NOT NULL,
    data       BLOB NOT NULL,
    ids        TEXT NOT NULL,
    at         REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (namespace, state_name, key)
);
CREATE TABLE IF NOT EXISTS nfbuilder_applied (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace  TEXT NOT NULL,
    state_name TEXT NOT NULL,
    key        TEXT NOT NULL,
    at         REAL NOT NULL,
    ids        TEXT NOT NULL,
    sizes      TEXT NOT NULL,
    outputs    BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS nfbuilder_applied_key
ON nfbuilder_applied (namespace, state_name, key);
CREATE INDEX IF NOT EXISTS nfbuilder_applied_at
ON nfbuilder_applied (namespace, state_name, key, at);
CREATE TABLE IF NOT EXISTS nfbuilder_fences (
    namespace  TEXT NOT NULL,
    state_name TEXT NOT NULL,
    partition  INTEGER NOT NULL,
    epoch      INTEGER NOT NULL,
    PRIMARY KEY (namespace, state_name, partition)
);
"""
# A row of nfbuilder_applied is one save of a key: ``seq`` its place in the order of saves (the
# rowid; AUTOINCREMENT: never one a deleted row had), ``ids`` the JSON list of the ids it applied
# (oldest first, each once), ``sizes`` the JSON list of their outputs' lengths, ``outputs`` those
# outputs (each signed for its id) one after the other, ``at`` the save's time. The key index
# (every index ends with the rowid) gives a key's rows in order and its newest row; the ``at``
# index finds the expired ones. The ``ids`` column of nfbuilder_state is empty (a JSON window
# in the oldest files).
_CLAIM = """INSERT INTO nfbuilder_fences VALUES (?, ?, ?, 1)
ON CONFLICT (namespace, state_name, partition) DO UPDATE SET epoch = epoch + 1"""
_EPOCH = ("SELECT epoch FROM nfbuilder_fences"
          " WHERE namespace = ? AND state_name = ? AND partition = ?")

_SELECT = ("SELECT data, ids, at FROM nfbuilder_state"
           " WHERE namespace = ? AND state_name = ? AND key = ?")
# files written before the snapshot's row had the time of its last save
_STATE_AT = "ALTER TABLE nfbuilder_state ADD COLUMN at REAL NOT NULL DEFAULT 0"
_SELECT_ROWS = (
    "SELECT at, ids, sizes, outputs FROM nfbuilder_applied"
    " WHERE namespace = ? AND state_name = ? AND key = ? ORDER BY rowid"
)
_NEWEST_FIRST = (
    "SELECT rowid, ids FROM nfbuilder_applied"
    " WHERE namespace = ? AND state_name = ? AND key = ? ORDER BY rowid DESC"
)
_NEWEST = (
    "SELECT rowid FROM nfbuilder_applied"
    " WHERE namespace = ? AND state_name = ? AND key = ? ORDER BY rowid DESC LIMIT 1"
)
# the last seq given (rows deleted since included; the largest in the file, should a tool have
# copied rows without their sequence)
_TOP = ("SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'nfbuilder_applied'),"
        " 0), coalesce((SELECT max(seq) FROM nfbuilder_applied), 0))")
_PUT_ROW = (
    "INSERT INTO nfbuilder_applied (seq, namespace, state_name, key, at, ids, sizes, outputs)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
# the rows older than the window's edge (the row holding its oldest id) saved before the horizon
_DROP_EXPIRED = (
    "DELETE FROM nfbuilder_applied WHERE namespace = ? AND state_name = ? AND key = ?"
    " AND at <= ? AND rowid < ?"
)
_DROP_ROW = "DELETE FROM nfbuilder_applied WHERE rowid = ?"
_UPSERT = """
INSERT INTO nfbuilder_state (namespace, state_name, key, data, ids, at) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (namespace, state_name, key)
DO UPDATE SET data = excluded.data, ids = excluded.ids, at = excluded.at
"""
# the release before: a row per applied id, converted at open (_convert_id_rows)
_OLD_TABLE = "nfbuilder_outputs"
# in its place, in every file of this layout: the release before creates its table only if the
# name is free, then fails to add a column to (or index) the view, so it refuses the file at
# open instead of running without the applied ids (and applying redelivered messages again)
_TOMBSTONE = (f"CREATE VIEW IF NOT EXISTS {_OLD_TABLE} AS SELECT 'this file is written by a later"
              " nfbuilder (applied ids in nfbuilder_applied)' AS written_by_a_later_release"
              " WHERE 0")

Ident = tuple[str, str, str]
# keys whose windows a store keeps (each at most ``id_window`` ids); a key beyond is read again
_WINDOWS = 4096


def _row(ids: list[str], blobs: list[bytes]) -> tuple[str, str, bytes]:
    """The ``ids``, ``sizes`` and ``outputs`` columns of a row of ``ids`` and their (signed)
    outputs ``blobs``."""
    return json.dumps(ids), json.dumps(list(map(len, blobs))), b"".join(blobs)


def _last_first(ids: Sequence[str]) -> list[str]:
    """``ids`` once each, in the order of their last occurrence (``merge_ids``'s rule)."""
    return list(reversed(dict.fromkeys(reversed(ids))))


class _Window:
    """Where one key's count window lies in its rows: the rows from the one holding the
    window's oldest id (the edge) to the newest, each with how many of its ids are not saved
    again in a newer row (live), and each of their ids' newest row.

    What a save needs to find the new edge and the rows wholly saved again, without reading
    the ids it does not write. Valid while :attr:`newest` is the key's newest row in the file."""

    __slots__ = ("live", "rows", "where")

    def __init__(self) -> None:
        self.rows: dict[int, list[str]] = {}  # rowid -> ids, oldest row first
        self.live: dict[int, int] = {}
        self.where: dict[str, int] = {}  # each live id -> its newest row (among ``rows``)

    @property
    def newest(self) -> int:
        """The rowid of the newest row (0: none); never dropped, so the file's newest."""
        return next(reversed(self.rows), 0)

    def add(self, rowid: int, ids: list[str], window: int) -> list[int]:
        """Append a newer row; the rows it leaves without a live id (saved again, not the
        newest), to delete whatever their age."""
        dead = []
        where, live = self.where, self.live
        for msg_id in ids:
            old = where.get(msg_id)
            if old is not None:
                live[old] -= 1
                if live[old] == 0:
                    dead.append(old)
            where[msg_id] = rowid
        self.rows[rowid] = ids
        live[rowid] = len(ids)
        for rowid in dead:
            self._drop(rowid)
        self._trim(window)
        return dead

    def edge(self) -> int:
        """The rowid of the row holding the window's oldest id (0: no row yet)."""
        return next(iter(self.rows), 0)

    def _trim(self, window: int) -> None:
        # the oldest row leaves while the newer ones hold the window without it (the live ids
        # are the keys of ``where``)
        rows, live = self.rows, self.live
        while rows:
            oldest = next(iter(rows))
            if len(self.where) - live[oldest] < window:
                return
            self._drop(oldest)

    def _drop(self, rowid: int) -> None:
        where = self.where
        for msg_id in self.rows.pop(rowid):
            if where.get(msg_id) == rowid:
                del where[msg_id]
        del self.live[rowid]

    @classmethod
    def read(cls, conn: sqlite3.Connection, ident: Ident, window: int) -> _Window:
        """A key's window as the file holds it: its rows read newest first to the edge."""
        found, seen = [], set()
        for rowid, ids_json in conn.execute(_NEWEST_FIRST, ident):
            ids = json.loads(ids_json)
            fresh = [i for i in ids if i not in seen]
            seen.update(fresh)
            found.append((rowid, ids, len(fresh)))
            if len(seen) >= window:
                break
        made = cls()
        for rowid, ids, live in reversed(found):
            made.rows[rowid] = ids
            made.live[rowid] = live
            for msg_id in ids:
                made.where[msg_id] = rowid
        return made


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
        # per key this store saved, where its window lies (most recently saved last)
        self._windows: dict[Ident, _Window] = {}

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
            conn.executescript(f"{_SCHEMA}{_TOMBSTONE};")  # no view yet where the table is
            if "at" not in [r[1] for r in conn.execute("PRAGMA table_info(nfbuilder_state)")]:
                try:
                    conn.execute(_STATE_AT)
                except sqlite3.OperationalError as exc:
                    if "duplicate column" not in str(exc):  # else: another process added it
                        raise
            _convert_id_rows(conn, url)
        except Exception as exc:  # noqa: BLE001 - sqlite3's, or a converted row's bad value
            conn.close()
            raise StateStoreError(
                f"cannot use SQLite state store {url} (file {path}): {exc}; "
                f"check that it is a writable SQLite database on a local disk (WAL mode needs one)"
            ) from exc
        return cls(conn, url=url, path=path, namespace=namespace, id_window=id_window,
                   id_retention_s=id_retention_s, signing_key=signing_key)

    def load(self, state_name: str, key: str) -> Snapshot | None:
        ident = (self.namespace, state_name, key)
        with self._lock:
            conn = self._conn
            try:
                # one read transaction: the snapshot and its ids as one save left them, even
                # when another process commits a save of the key in between
                conn.execute("BEGIN")
                try:
                    row = conn.execute(_SELECT, ident).fetchone()
                    saves = conn.execute(_SELECT_ROWS, ident).fetchall() if row else []
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._error("load", state_name, key, exc) from exc
        if row is None:
            return None
        kept: dict[str, tuple[bytes, float]] = {}  # in the order of each id's newest save
        # the last save's time (the latest, should a clock step back; a save without ids
        # writes no row: the snapshot's row has it)
        newest = float(row[2])
        for at, ids_json, sizes_json, blob in saves:
            ids, sizes = json.loads(ids_json), json.loads(sizes_json)
            if len(ids) != len(sizes) or sum(sizes) != len(blob):
                raise StateStoreError(
                    f"state store {self.url_for_display}: a row of applied ids of state "
                    f"{state_name!r} key {key!r} is damaged ({len(ids)} ids, {len(sizes)} sizes "
                    f"adding up to {sum(sizes)} bytes of {len(blob)}); check the file and the disk")
            start = 0
            for msg_id, size in zip(ids, sizes, strict=True):
                kept.pop(msg_id, None)
                kept[msg_id] = (blob[start:start + size], at)
                start += size
            newest = max(newest, at)
        check = self._seal.check
        if row[1]:  # an older file's count window is the JSON list in the snapshot's row
            window = json.loads(row[1])
        else:
            window = list(kept)[-self.id_window:]
            # what the last save's delete would have left of the row at the window's edge:
            # the ids saved within the retention before it (none with the count alone: no id
            # was saved after ``newest``)
            horizon, inside = newest - self.id_retention_s, set(window)
            kept = {i: v for i, v in kept.items() if v[1] > horizon or i in inside}
        return timed_snapshot(check(bytes(row[0]), state_name, key), window,
                              [(i, check(b, state_name, key, i), at)
                               for i, (b, at) in kept.items()])

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
        # signed and put in rows before the write lock is taken, to keep the transaction short
        seal, namespace = self._seal, self.namespace
        states, rows = [], []
        for save in saves:
            ident = (namespace, save.state_name, save.key)
            states.append((*ident, seal.sign(save.data, save.state_name, save.key), ""))
            # in the order of their last application: an id applied twice is newest
            ids = _last_first(save.applied_ids)
            blobs = seal.sign_outputs(save.outputs or {}, ids, save.state_name, save.key)
            # a save without ids writes no row, but still expires what its time puts past the
            # retention (as in every store)
            rows.append((ident, ids, *_row(ids, [blobs[i] for i in ids])))
        first = saves[0]
        with self._lock:
            conn = self._conn
            try:
                # IMMEDIATE takes the write lock before the windows are checked against the
                # file, so no other process can slip a save for these keys in between.
                conn.execute("BEGIN IMMEDIATE")
                if fence is not None:
                    for name in dict.fromkeys(s.state_name for s in saves):
                        row = conn.execute(_EPOCH, (self.namespace, name, fence[0])).fetchone()
                        if row is None or row[0] != fence[1]:
                            raise fenced(self.url_for_display, name, first.key, fence)
                now = time.time()
                conn.executemany(_UPSERT, [(*state, now) for state in states])
                updated = self._append(conn, rows, now)
                conn.execute("COMMIT")
            except BaseException as exc:
                try:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the connection itself is unusable; its transaction died with it
                if isinstance(exc, sqlite3.Error):
                    raise self._error("save", first.state_name, first.key, exc) from exc
                raise
        # only now: a window never holds what the file does not (most recently saved last)
        windows = self._windows
        windows.update(updated)
        while len(windows) > _WINDOWS:
            del windows[next(iter(windows))]

    def _append(self, conn: sqlite3.Connection, rows: list[tuple[Ident, list[str], str, str,
                                                                 bytes]],
                now: float) -> dict[Ident, _Window]:
        """Insert a row per save and delete what the saves pushed out, in the open transaction;
        the keys' windows after it, for :meth:`save_many` to keep once it commits (taken out
        of the store's until then).

        Rowids are given here (after the last one given: the write lock is held) so each
        key's window knows its rows without reading them back."""
        windows, window = self._windows, self.id_window
        updated: dict[Ident, _Window] = {}
        dead: list[tuple[int]] = []
        top = conn.execute(_TOP).fetchone()[0]
        inserts = []
        for ident, ids, ids_json, sizes_json, blob in rows:
            known = updated.get(ident)
            if known is None:  # the key's first row in this batch: saved elsewhere meanwhile?
                known = windows.pop(ident, None)
                newest = None if known is None else conn.execute(_NEWEST, ident).fetchone()
                if known is None or known.newest != (newest[0] if newest else 0):
                    known = _Window.read(conn, ident, window)
                updated[ident] = known
            if ids:
                top += 1
                inserts.append((top, *ident, now, ids_json, sizes_json, blob))
                dead += [(rowid,) for rowid in known.add(top, ids, window)]
        if inserts:
            conn.executemany(_PUT_ROW, inserts)
        if dead:
            conn.executemany(_DROP_ROW, dead)
        horizon = now - self.id_retention_s
        conn.executemany(_DROP_EXPIRED,
                         [(*i, horizon, known.edge()) for i, known in updated.items()])
        return updated

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
                conn.execute("DELETE FROM nfbuilder_applied WHERE namespace = ?",
                             (self.namespace,))
                conn.execute("DELETE FROM nfbuilder_fences WHERE namespace = ?",
                             (self.namespace,))
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise self._error("clear", "*", "*", exc) from exc
            self._windows.clear()
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


def _convert_id_rows(conn: sqlite3.Connection, url: str) -> None:
    """Rewrite a file of the release before (a row per applied id in ``nfbuilder_outputs``) into
    rows per save: a key's consecutive ids saved at the same time (one save's) become one row,
    their order and times kept, their signed outputs copied as they are; a key at a time, so
    memory holds one key's ids. One transaction; a process that opens the file at the same time
    waits for it (up to its timeout) and finds it done. The old table becomes the view
    :data:`_TOMBSTONE`, which a release before cannot open."""
    def old_table() -> bool:
        return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                            (_OLD_TABLE,)).fetchone() is not None

    if not old_table():
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if not old_table():
            conn.execute("ROLLBACK")
            return
        columns = [r[1] for r in conn.execute(f"PRAGMA table_info({_OLD_TABLE})")]
        at = "at" if "at" in columns else "0"  # files written before ids had times: 0
        found = conn.execute(
            f"SELECT namespace, state_name, key, msg_id, outputs, {at} FROM {_OLD_TABLE}"
            " ORDER BY namespace, state_name, key, rowid")
        n = keys = 0
        for ident, rows in itertools.groupby(found, key=lambda row: row[:3]):
            runs: list[tuple[float, list[str], list[bytes]]] = []
            for *_, msg_id, blob, when in rows:
                if not runs or runs[-1][0] != when:
                    runs.append((float(when), [], []))
                runs[-1][1].append(msg_id)
                runs[-1][2].append(bytes(blob))
                n += 1
            keys += 1
            conn.executemany(_PUT_ROW, [(None, *ident, when, *_row(ids, blobs))
                                        for when, ids, blobs in runs])
        conn.execute(f"DROP TABLE {_OLD_TABLE}")
        conn.execute(_TOMBSTONE)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    log.info("state store %s: converted %d applied ids of %d keys to a row per save", url, n,
             keys)


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
