"""State stores (nfbuilder.runtime.state): SQLite, Redis (a real redis-server) and memory."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from redis_server import RedisServer, require_redis_server, start_redis_server

from nfbuilder.runtime.state import (
    FencedError,
    Save,
    Snapshot,
    StateStore,
    StateStoreError,
    mask_url,
    merge_ids,
    open_store,
)
from nfbuilder.runtime.state.redis_store import hash_name, times_name

OpenStore = Callable[..., StateStore]


@pytest.fixture(params=["sqlite", "redis", "memory"])
def open_kind(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens stores of one kind; every store opened on the same URL (memory: same instance)."""
    kind = request.param
    opened: list[StateStore] = []
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    elif kind == "redis":
        url = request.getfixturevalue("redis_server").url
    else:
        url = "memory://"

    def open_(namespace: str = "app", **kwargs: object) -> StateStore:
        store = open_store(url, namespace=namespace, **kwargs)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


# ---------------------------------------------------------------- behaviour shared by all stores


def test_round_trip(open_kind: OpenStore) -> None:
    store = open_kind()
    store.save("counts", "apple", b"\x00\x01state", ["v-1-0", "v-2-0"])
    assert store.load("counts", "apple") == Snapshot(b"\x00\x01state", ("v-1-0", "v-2-0"))
    store.save("counts", "apple", b"next", ["v-3-0"])
    assert store.load("counts", "apple") == Snapshot(b"next", ("v-1-0", "v-2-0", "v-3-0"))


def test_save_many_saves_each_key_as_save_does(open_kind: OpenStore) -> None:
    store = open_kind()
    store.save("counts", "apple", b"1", ["v-1-0"])
    store.save_many([Save("counts", "apple", b"2", ["v-2-0"], {"v-2-0": b"out"}),
                     Save("counts", "pear", b"1", ["v-3-0"]),
                     Save("other", "apple", b"x", ["v-4-0"])])
    assert store.load("counts", "apple") == Snapshot(b"2", ("v-1-0", "v-2-0"))
    assert dict(store.load("counts", "apple").outputs)["v-2-0"] == b"out"  # type: ignore[union-attr]
    assert store.load("counts", "pear") == Snapshot(b"1", ("v-3-0",))
    assert store.load("other", "apple") == Snapshot(b"x", ("v-4-0",))
    store.save_many([])  # nothing to do


def test_count_and_clear_cover_one_namespace(open_kind: OpenStore) -> None:
    app, other = open_kind("app"), open_kind("other")
    assert app.count() == 0
    for key in ("a", "b", "c"):
        app.save("s", key, b"x", [f"v-{key}"], {f"v-{key}": b"out"})
    app.save("t", "a", b"y", ["v-t"])
    other.save("s", "a", b"z", ["v-o"])
    assert (app.count(), other.count()) == (4, 1)
    assert app.clear() == 4
    assert app.count() == 0 and app.load("s", "a") is None
    assert other.count() == 1 and other.load("s", "a") == Snapshot(b"z", ("v-o",))
    app.save("s", "a", b"again", ["v-2"])  # a cleared key starts over, without old outputs
    assert app.load("s", "a") == Snapshot(b"again", ("v-2",))


def test_load_of_unknown_key_is_none(open_kind: OpenStore) -> None:
    store = open_kind()
    assert store.load("counts", "never-saved") is None


def test_namespaces_state_names_and_keys_are_independent(open_kind: OpenStore) -> None:
    app, other = open_kind("app"), open_kind("other")
    # ':' in names must not make two different triples meet in one Redis hash.
    app.save("a:b", "c", b"1", ["x"])
    app.save("a", "b:c", b"2", ["y"])
    app.save("a", "b", b"3", ["z"])
    other.save("a:b", "c", b"4", ["w"])
    assert app.load("a:b", "c") == Snapshot(b"1", ("x",))
    assert app.load("a", "b:c") == Snapshot(b"2", ("y",))
    assert app.load("a", "b") == Snapshot(b"3", ("z",))
    assert other.load("a:b", "c") == Snapshot(b"4", ("w",))
    assert other.load("a", "b") is None


def test_retrying_the_same_save_leaves_the_same_result(open_kind: OpenStore) -> None:
    store = open_kind(id_window=4, id_retention_s=0)
    store.save("s", "k", b"old", ["a", "b", "c"])
    store.save("s", "k", b"new", ["d", "e"])
    first = store.load("s", "k")
    store.save("s", "k", b"new", ["d", "e"])
    assert first == Snapshot(b"new", ("b", "c", "d", "e"))
    assert store.load("s", "k") == first


def test_id_window_keeps_the_newest_ids_in_order(open_kind: OpenStore) -> None:
    store = open_kind(id_window=1024, id_retention_s=0)
    ids = [f"map-{i}-0" for i in range(3000)]
    store.save("s", "k", b"x", ids)
    snap = store.load("s", "k")
    assert snap is not None and snap.applied_ids == tuple(ids[-1024:])
    store.save("s", "k", b"y", ["map-3000-0"])
    snap = store.load("s", "k")
    assert snap is not None and snap.applied_ids == (*ids[-1023:], "map-3000-0")
    assert snap.contains("map-3000-0") and snap.contains(ids[-1023])
    assert not snap.contains(ids[-1024])


def test_every_store_follows_the_merge_rule(open_kind: OpenStore) -> None:
    """Random saves with repeated ids give exactly merge_ids' result, retries included."""
    rng = random.Random(7)
    store = open_kind(id_window=5, id_retention_s=0)
    expected: tuple[str, ...] = ()
    for step in range(40):
        new = [f"m{rng.randrange(12)}" for _ in range(rng.randrange(0, 8))]
        expected = merge_ids(expected, new, 5)
        store.save("s", "k", str(step).encode(), new)
        assert store.load("s", "k") == Snapshot(str(step).encode(), expected), step
        store.save("s", "k", str(step).encode(), new)  # a retry changes nothing
        assert store.load("s", "k") == Snapshot(str(step).encode(), expected), step


def test_every_store_expires_ids_on_a_save_without_ids(
    open_kind: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kept by time means saved less than the retention before the key's last save, whether
    or not that save applied ids."""
    clock = [1000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    store = open_kind(id_window=1, id_retention_s=2)
    store.save("s", "k", b"1", ["a"])
    store.save("s", "k", b"2", ["b"])
    assert store.load("s", "k") == Snapshot(b"2", ("a", "b"))  # "a": by its time
    clock[0] = 1010.0
    store.save("s", "k", b"3", [])
    assert store.load("s", "k") == Snapshot(b"3", ("b",))


def test_durable_flag(open_kind: OpenStore) -> None:
    store = open_kind()
    assert store.durable is (store.url_for_display != "memory://")


# ---------------------------------------------------------------- pure helpers


def test_merge_ids_moves_a_repeated_id_to_the_newest_position() -> None:
    assert merge_ids(["a", "b", "c"], ["b", "d"], 10) == ("a", "c", "b", "d")
    assert merge_ids(["a", "b"], ["b", "c"], 2) == ("b", "c")
    assert merge_ids([], ["x", "x", "y"], 10) == ("x", "y")


def test_snapshot_contains() -> None:
    snap = Snapshot(b"", ["v-1-0", "v-2-0"])
    assert snap.applied_ids == ("v-1-0", "v-2-0")
    assert snap.contains("v-2-0") and not snap.contains("v-3-0")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:secret@127.0.0.1:1/0", "redis://user:***@127.0.0.1:1/0"),
        ("rediss://:secret@redis:6380/2", "rediss://:***@redis:6380/2"),
        ("redis://redis:6379/0?password=secret&db=1", "redis://redis:6379/0?password=***&db=1"),
        ("redis://user@redis:6379/0", "redis://user@redis:6379/0"),
        ("redis://u:pa/ss@redis:6379/0", "redis://u:***@redis:6379/0"),
        ("memory://", "memory://"),
        ("sqlite:///state.db", "sqlite:///state.db"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


# ---------------------------------------------------------------- URL and argument errors


def test_unknown_scheme_is_refused_with_the_masked_url() -> None:
    with pytest.raises(StateStoreError) as err:
        open_store("postgres://u:pw@db/x", namespace="app")
    assert str(err.value) == (
        "unknown state store URL 'postgres://u:***@db/x': use sqlite:///path.db, "
        "redis://[user:password@]host:port/db, rediss://... or memory://"
    )


def test_empty_namespace_and_bad_window_are_refused() -> None:
    with pytest.raises(StateStoreError, match="namespace is empty; pass the application"):
        open_store("memory://", namespace="")
    with pytest.raises(StateStoreError, match=r"id_window must be >= 1, got 0; use at least"):
        open_store("memory://", namespace="app", id_window=0)


def test_memory_store_is_not_durable_and_refuses_use_after_close() -> None:
    store = open_store("memory://", namespace="app")
    assert store.durable is False
    store.close()
    with pytest.raises(StateStoreError, match=r"memory:// was used after close\(\)"):
        store.load("s", "k")


# ---------------------------------------------------------------- SQLite


def test_sqlite_bad_url_says_how_to_write_one() -> None:
    with pytest.raises(StateStoreError) as err:
        open_store("sqlite://state.db", namespace="app")
    assert str(err.value) == (
        "invalid SQLite state store URL 'sqlite://state.db': use sqlite:///relative/path.db or "
        "sqlite:////absolute/path.db (three slashes, then the path)"
    )


def test_sqlite_relative_path_creates_parent_dirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///deep/er/state.db", namespace="app")
    store.save("s", "k", b"1", ["a"])
    store.close()
    assert (tmp_path / "deep" / "er" / "state.db").is_file()
    conn = sqlite3.connect(tmp_path / "deep" / "er" / "state.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_sqlite_unusable_path_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "state.db").mkdir()  # a directory where the database file should be
    with pytest.raises(StateStoreError) as err:
        open_store(f"sqlite:///{tmp_path}/state.db", namespace="app")
    assert str(err.value).startswith(
        f"cannot open SQLite state store sqlite:///{tmp_path}/state.db "
        f"(file {tmp_path}/state.db): "
    )
    assert "check that the directory exists or can be created and is writable" in str(err.value)


def test_sqlite_save_blocked_by_another_writer_fails_cleanly(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/state.db"
    store = open_store(url, namespace="app", timeout=0.2)
    store.save("s", "k", b"old", ["a"])
    blocker = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StateStoreError) as err:
            store.save("s", "k", b"new", ["b"])
        assert str(err.value).startswith(
            f"cannot save state 's' key 'k' in SQLite state store {url} "
            f"(file {tmp_path}/state.db): database is locked; another process held"
        )
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert store.load("s", "k") == Snapshot(b"old", ("a",))
    store.save("s", "k", b"new", ["b"])  # usable again once the lock is gone
    assert store.load("s", "k") == Snapshot(b"new", ("a", "b"))
    store.close()


def _run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_sqlite_snapshot_is_read_back_by_another_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/state.db"
    store = open_store(url, namespace="app")
    store.save("counts", "apple", b"\xff\x00snapshot", ["v-1-0", "v-2-0"])
    store.close()
    out = _run_python(f"""
        import json
        from nfbuilder.runtime.state import open_store
        snap = open_store({url!r}, namespace="app").load("counts", "apple")
        print(json.dumps([snap.data.hex(), list(snap.applied_ids)]))
    """)
    assert json.loads(out) == [b"\xff\x00snapshot".hex(), ["v-1-0", "v-2-0"]]


def test_sqlite_two_processes_write_their_own_keys_on_one_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/state.db"
    code = """
        import sys
        from nfbuilder.runtime.state import open_store
        store = open_store({url!r}, namespace="app")
        for i in range(150):
            store.save("s", "{who}-" + str(i % 10), str(i).encode(), ["{who}-m" + str(i)])
    """
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code.format(url=url, who=who))],
            stderr=subprocess.PIPE, text=True,
        )
        for who in ("p0", "p1")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    store = open_store(url, namespace="app")
    for who in ("p0", "p1"):
        for k in range(10):
            mine = [f"{who}-m{i}" for i in range(150) if i % 10 == k]
            assert store.load("s", f"{who}-{k}") == Snapshot(str(140 + k).encode(), tuple(mine))
    store.close()


def test_sqlite_processes_opening_one_new_file_at_once_all_succeed(tmp_path: Path) -> None:
    """The partitions of a vertex start together: the switch to WAL must not fail on a lock
    (SQLite reports it at once, without the busy timeout; seen 2 times in 100 before)."""
    for round_ in range(3):
        url = f"sqlite:///{tmp_path}/race-{round_}.db"
        code = (f"from nfbuilder.runtime.state import open_store\n"
                f"open_store({url!r}, namespace='a').save('s', 'k', b'x', ['m'])")
        procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE,
                                  text=True) for _ in range(6)]
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err


# ---------------------------------------------------------------- Redis


def test_sqlite_save_many_is_one_transaction_refused_whole_when_fenced(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    old_owner, new_owner = open_store(url, namespace="app"), open_store(url, namespace="app")
    try:
        first = old_owner.claim("s", 0)
        old_owner.save_many([Save("s", "a", b"1", ["m-1"])], fence=(0, first))
        new_owner.claim("s", 0)
        with pytest.raises(FencedError):
            old_owner.save_many([Save("s", "a", b"2", ["m-2"]), Save("s", "b", b"1", ["m-3"])],
                                fence=(0, first))
        assert new_owner.load("s", "a") == Snapshot(b"1", ("m-1",))  # nothing of it written
        assert new_owner.load("s", "b") is None
    finally:
        old_owner.close()
        new_owner.close()


# the tables of the release before this layout: a row per applied id
_ID_ROWS_SCHEMA = """
CREATE TABLE nfbuilder_state (namespace TEXT NOT NULL, state_name TEXT NOT NULL,
    key TEXT NOT NULL, data BLOB NOT NULL, ids TEXT NOT NULL,
    PRIMARY KEY (namespace, state_name, key));
CREATE TABLE nfbuilder_outputs (namespace TEXT NOT NULL, state_name TEXT NOT NULL,
    key TEXT NOT NULL, msg_id TEXT NOT NULL, outputs BLOB NOT NULL{at},
    PRIMARY KEY (namespace, state_name, key, msg_id));
CREATE INDEX nfbuilder_outputs_key ON nfbuilder_outputs (namespace, state_name, key);
"""


def _file_of_id_rows(path: Path, state: list[tuple[str, bytes, str]],
                     ids: list[tuple[str, str, bytes, float]], times: bool = True) -> str:
    """A state file as the release before wrote it: ``state`` (key, data, JSON window) and a
    row per applied id ``ids`` (key, id, outputs, saved at), in order."""
    conn = sqlite3.connect(path)
    conn.executescript(_ID_ROWS_SCHEMA.format(at=", at REAL NOT NULL DEFAULT 0" if times else ""))
    conn.executemany("INSERT INTO nfbuilder_state VALUES ('app', 's', ?, ?, ?)", state)
    if times:
        conn.executemany("INSERT INTO nfbuilder_outputs VALUES ('app', 's', ?, ?, ?, ?)", ids)
    else:
        conn.executemany("INSERT INTO nfbuilder_outputs VALUES ('app', 's', ?, ?, ?)",
                         [row[:3] for row in ids])
    conn.commit()
    conn.close()
    return f"sqlite:///{path}"


def _tables(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _rows(path: Path, key: str = "k") -> list[tuple[list[str], float]]:
    """The ids and time of each row of applied ids of ``key``, oldest first."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return [(json.loads(ids), at) for ids, at in conn.execute(
            "SELECT ids, at FROM nfbuilder_applied WHERE key = ? ORDER BY rowid", (key,))]


def test_sqlite_file_of_a_row_per_id_is_converted_at_open(tmp_path: Path) -> None:
    """Each key's ids saved at one time become one row, in order, their outputs and times
    kept; the old table goes; the next save goes on from the converted window."""
    now = time.time()
    path = tmp_path / "state.db"
    url = _file_of_id_rows(path, [("k", b"k-state", ""), ("j", b"j", "")], [
        ("k", "m-1", b"o1", now - 100), ("k", "m-2", b"", now - 100), ("j", "n-1", b"", now),
        ("k", "m-3", b"o3", now - 1), ("k", "m-4", b"", now - 1)])
    store = open_store(url, namespace="app", id_window=3, id_retention_s=120)
    try:
        assert "nfbuilder_outputs" not in _tables(path)
        assert _rows(path) == [(["m-1", "m-2"], now - 100), (["m-3", "m-4"], now - 1)]
        snap = store.load("s", "k")
        assert snap == Snapshot(b"k-state", ("m-1", "m-2", "m-3", "m-4"))  # m-1: by its time
        assert dict(snap.outputs) == {"m-1": b"o1", "m-2": b"", "m-3": b"o3", "m-4": b""}
        assert snap.applied_at == (now - 100, now - 100, now - 1, now - 1)
        assert store.load("s", "j") == Snapshot(b"j", ("n-1",))
        store.save("s", "k", b"next", ["m-5"])
        assert store.load("s", "k") == Snapshot(b"next", ("m-1", "m-2", "m-3", "m-4", "m-5"))
    finally:
        store.close()
    # a shorter retention: the first row is out of the window of 3 and expired, so deleted
    again = open_store(url, namespace="app", id_window=3, id_retention_s=50)
    try:
        again.save("s", "k", b"last", ["m-6"])
        assert [ids for ids, _ in _rows(path)] == [["m-3", "m-4"], ["m-5"], ["m-6"]]
        # m-3 is out of the window too, but younger than 50 s
        assert again.load("s", "k") == Snapshot(b"last", ("m-3", "m-4", "m-5", "m-6"))
    finally:
        again.close()


def test_sqlite_signed_file_of_a_row_per_id_keeps_its_signatures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outputs are copied as they were signed (for their ids): no key is needed to convert,
    and a tampered one is still refused when its key is loaded."""
    from nfbuilder.runtime.state.signing import KEY_ENV, Seal, StateIntegrityError

    seal = Seal(b"key-a", shown="", namespace="app")
    outs = seal.sign_outputs({"m-1": b"one"}, ["m-1", "m-2"], "s", "k")
    url = _file_of_id_rows(tmp_path / "state.db", [("k", seal.sign(b"data", "s", "k"), ""),
                                                   ("bad", seal.sign(b"data", "s", "bad"), "")],
                           [("k", "m-1", outs["m-1"], 1.0), ("k", "m-2", outs["m-2"], 1.0),
                            ("bad", "m-1", outs["m-1"], 1.0)])  # m-1's outputs under another key
    monkeypatch.delenv(KEY_ENV, raising=False)
    open_store(url, namespace="app").close()  # converted without the key
    monkeypatch.setenv(KEY_ENV, "key-a")
    store = open_store(url, namespace="app", id_retention_s=0)
    try:
        snap = store.load("s", "k")
        assert snap == Snapshot(b"data", ("m-1", "m-2"))
        assert dict(snap.outputs) == {"m-1": b"one", "m-2": b""}
        with pytest.raises(StateIntegrityError, match="recorded outputs of message 'm-1'"):
            store.load("s", "bad")
    finally:
        store.close()


def test_sqlite_file_with_a_json_id_window_is_read_and_then_rewritten(tmp_path: Path) -> None:
    """Files written before the rows were the window (and before ids had times) keep it as
    JSON in the snapshot's row: read as it is, and the next save goes on from it."""
    url = _file_of_id_rows(tmp_path / "state.db", [("k", b"old", json.dumps(["m-2", "m-3"]))],
                           [("k", "m-1", b"", 0), ("k", "m-2", b"o2", 0), ("k", "m-3", b"", 0)],
                           times=False)
    store = open_store(url, namespace="app", id_window=3, id_retention_s=0)
    try:
        snap = store.load("s", "k")
        assert snap is not None and snap.applied_ids == ("m-1", "m-2", "m-3")
        assert dict(snap.outputs)["m-2"] == b"o2"
        store.save("s", "k", b"new", ["m-4"])
        assert store.load("s", "k") == Snapshot(b"new", ("m-2", "m-3", "m-4"))  # window of 3
    finally:
        store.close()


def test_sqlite_keeps_a_row_per_save_and_only_the_rows_the_window_needs(tmp_path: Path) -> None:
    """A save writes one row for its ids; a row whose ids all left the window (retention 0)
    or were all saved again later is deleted."""
    path = tmp_path / "state.db"
    store = open_store(f"sqlite:///{path}", namespace="app", id_window=10, id_retention_s=0)
    try:
        for n in range(20):
            store.save("s", "k", b"x", [f"m-{n}-{i}" for i in range(3)])
        # the window's 10 ids: the newest 3 rows and 1 id of the row before (the edge)
        assert [len(ids) for ids, _ in _rows(path)] == [3, 3, 3, 3]
        for _ in range(3):  # a save retried: its first rows hold nothing the last does not
            store.save("s", "k", b"x", ["r-1", "r-2"])
        assert [len(ids) for ids, _ in _rows(path)] == [3, 3, 3, 2]  # the edge moved by 2
        snap = store.load("s", "k")
        assert snap is not None and snap.applied_ids == (
            "m-17-0", "m-17-1", "m-17-2", "m-18-0", "m-18-1", "m-18-2", "m-19-0", "m-19-1",
            "m-19-2", "r-1", "r-2")[-10:]
    finally:
        store.close()


@pytest.mark.parametrize(("window", "clear", "last", "kept"), [
    (2, False, "e", ("d", "e")),  # the rows the other store's saves pushed out still go
    # cleared and saved again: the new rows do not take the places of the rows known here
    # (same places, other ids: "a" again would delete "c"'s row as "a"'s)
    (3, True, "a", ("c", "d", "a")),
], ids=["saved elsewhere", "cleared and saved elsewhere"])
def test_sqlite_sees_another_process_save_the_same_key(
    tmp_path: Path, window: int, clear: bool, last: str, kept: tuple[str, ...]
) -> None:
    """Where a key's window lies is kept between saves, and checked against the file."""
    path = tmp_path / "state.db"
    url = f"sqlite:///{path}"
    first = open_store(url, namespace="app", id_window=window, id_retention_s=0)
    other = open_store(url, namespace="app", id_window=window, id_retention_s=0)
    try:
        first.save("s", "k", b"1", ["a"])
        first.save("s", "k", b"2", ["b"])
        if clear:
            other.clear()
        other.save("s", "k", b"3", ["c"])
        other.save("s", "k", b"4", ["d"])
        first.save("s", "k", b"5", [last])
        assert [ids for ids, _ in _rows(path)] == [[i] for i in kept]
        assert first.load("s", "k") == Snapshot(b"5", kept)
    finally:
        first.close()
        other.close()


def test_sqlite_save_failing_midway_writes_nothing_and_the_next_one_works(
    tmp_path: Path
) -> None:
    """Whatever stops a save in its transaction (here a bug of ours, at its very end), it is
    rolled back, the store keeps no window of its keys, and the next save reads it again."""
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}", namespace="app", id_window=2,
                       id_retention_s=0)
    real = store._conn  # type: ignore[attr-defined]

    class BrokenCommit:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def execute(self, sql: str, *args: Any) -> Any:
            if sql == "COMMIT":
                raise RuntimeError("a bug")
            return real.execute(sql, *args)

    try:
        store.save("s", "k", b"1", ["a"])
        store._conn = BrokenCommit()  # type: ignore[attr-defined]
        with pytest.raises(RuntimeError, match="a bug"):
            store.save("s", "k", b"2", ["b"])
        store._conn = real  # type: ignore[attr-defined]
        assert ("app", "s", "k") not in store._windows  # type: ignore[attr-defined]
        assert store.load("s", "k") == Snapshot(b"1", ("a",))
        store.save("s", "k", b"3", ["c"])
        store.save("s", "k", b"4", ["d"])
        assert store.load("s", "k") == Snapshot(b"4", ("c", "d"))
        assert [ids for ids, _ in _rows(tmp_path / "state.db")] == [["c"], ["d"]]
    finally:
        store._conn = real  # type: ignore[attr-defined]
        store.close()


_OP: st.SearchStrategy[tuple[str, int, list[tuple[str, list[str]]]]] = st.one_of(
    # a batch of saves by store 0 or 1: keys k0/k1 (one may come twice), ids from a small set
    st.tuples(st.just("save"), st.integers(0, 1), st.lists(st.tuples(
        st.sampled_from(["k0", "k1"]), st.lists(st.sampled_from("abcdefgh"), max_size=5)),
        min_size=1, max_size=3)),
    st.tuples(st.just("clear"), st.integers(0, 1), st.just([])),
    st.tuples(st.just("reopen"), st.integers(0, 1), st.just([])),  # its windows forgotten
)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 4), st.lists(_OP, max_size=25))
def test_sqlite_two_stores_on_one_file_follow_the_merge_rule(
    window: int, ops: list[tuple[str, int, list[tuple[str, list[str]]]]]
) -> None:
    """Random batches of saves by two stores on one file (repeated ids, a key twice in a batch,
    clears, reopened stores): every load is merge_ids' window, and every row kept holds an id
    of the window at its newest place (retention 0: nothing else is worth keeping)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.db"
        url = f"sqlite:///{path}"
        stores = [open_store(url, namespace="app", id_window=window, id_retention_s=0)
                  for _ in range(2)]
        model: dict[str, tuple[str, ...]] = {}
        try:
            for kind, who, saves in ops:
                if kind == "save":
                    stores[who].save_many([Save("s", key, b"x", ids) for key, ids in saves])
                    for key, ids in saves:
                        model[key] = merge_ids(model.get(key, ()), ids, window)
                elif kind == "clear":
                    stores[who].clear()
                    model.clear()
                else:
                    stores[who].close()
                    stores[who] = open_store(url, namespace="app", id_window=window,
                                             id_retention_s=0)
                for key in ("k0", "k1"):
                    snap = stores[0].load("s", key)
                    assert (snap.applied_ids if snap else None) == model.get(key)
                    newest: dict[str, int] = {}
                    rows = _rows(path, key)
                    for n, (ids, _) in enumerate(rows):
                        newest.update(dict.fromkeys(ids, n))
                    for n, (ids, _) in enumerate(rows):
                        assert any(newest[i] == n and i in model[key] for i in ids), (key, rows)
        finally:
            for store in stores:
                store.close()


def test_sqlite_load_reads_the_snapshot_and_its_ids_as_one_save_left_them(tmp_path: Path) -> None:
    """Another process's save committed between the load's two reads is not half seen: the
    data of one save with the ids of the next would skip a redelivered id its data lacks."""
    from nfbuilder.runtime.state import sqlite as sqlite_store

    url = f"sqlite:///{tmp_path / 'state.db'}"
    reader, writer = open_store(url, namespace="app"), open_store(url, namespace="app")
    try:
        writer.save("s", "k", b"count=1", ["m-1"])
        real = reader._conn  # type: ignore[attr-defined]

        class Between:
            """The reader's connection; the writer saves right after the snapshot's row is read."""

            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            def execute(self, sql: str, *args: Any) -> Any:
                found = real.execute(sql, *args)
                if sql == sqlite_store._SELECT:
                    row = found.fetchone()
                    writer.save("s", "k", b"count=2", ["m-2"])
                    return _Rows(row)
                return found

        reader._conn = Between()  # type: ignore[attr-defined]
        assert reader.load("s", "k") == Snapshot(b"count=1", ("m-1",))
        reader._conn = real  # type: ignore[attr-defined]
        assert reader.load("s", "k") == Snapshot(b"count=2", ("m-1", "m-2"))
    finally:
        reader.close()
        writer.close()


class _Rows:
    def __init__(self, row: Any) -> None:
        self.row = row

    def fetchone(self) -> Any:
        return self.row


def test_sqlite_count_window_alone_whatever_the_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With retention 0 an id pushed out of the window stays out, even when the clock steps
    back between two saves (the older row then looks newer)."""
    from nfbuilder.runtime.state import sqlite as sqlite_store

    clock = [1000.0]
    monkeypatch.setattr(sqlite_store.time, "time", lambda: clock[0])
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}", namespace="app", id_window=1,
                       id_retention_s=0)
    try:
        store.save("s", "k", b"1", ["b", "a"])
        clock[0] = 999.0
        store.save("s", "k", b"2", ["a"])
        assert store.load("s", "k") == Snapshot(b"2", ("a",))
    finally:
        store.close()


def test_sqlite_file_is_refused_by_the_release_before(tmp_path: Path) -> None:
    """Every file of this layout (new or converted) has a view where the release before kept
    its ids: that release creates its table only if the name is free, and then fails on the
    view at open instead of running without the applied ids."""
    new = tmp_path / "new.db"
    open_store(f"sqlite:///{new}", namespace="app").close()
    converted = tmp_path / "converted.db"
    open_store(_file_of_id_rows(converted, [("k", b"x", "")], [("k", "m-1", b"", 1.0)]),
               namespace="app").close()
    for path in (new, converted):
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS nfbuilder_outputs (namespace TEXT)")
            with pytest.raises(sqlite3.OperationalError, match="view"):
                conn.execute("ALTER TABLE nfbuilder_outputs ADD COLUMN at REAL NOT NULL DEFAULT 0")
            with pytest.raises(sqlite3.OperationalError, match="view"):
                conn.execute("CREATE INDEX IF NOT EXISTS nfbuilder_outputs_key"
                             " ON nfbuilder_outputs (namespace, state_name, key)")


def test_sqlite_old_row_that_cannot_be_converted_fails_the_open_naming_the_file(
    tmp_path: Path
) -> None:
    path = tmp_path / "state.db"
    url = _file_of_id_rows(path, [("k", b"x", "")],
                           [("k", "m-1", "text, not bytes", 1.0)])  # type: ignore[list-item]
    with pytest.raises(StateStoreError, match=f"cannot use SQLite state store {url} "):
        open_store(url, namespace="app")
    assert "nfbuilder_outputs" in _tables(path)  # nothing converted: it is all still there


def test_sqlite_saves_go_on_after_the_sequence_of_rows_is_lost(tmp_path: Path) -> None:
    """A file copied by a tool without sqlite_sequence's row still numbers new rows after
    the largest it holds."""
    path = tmp_path / "state.db"
    store = open_store(f"sqlite:///{path}", namespace="app", id_window=2, id_retention_s=0)
    try:
        store.save("s", "k", b"1", ["a"])
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            conn.execute("DELETE FROM sqlite_sequence")
        store.save("s", "k", b"2", ["b"])
        store.save("s", "k", b"3", ["c"])
        assert store.load("s", "k") == Snapshot(b"3", ("b", "c"))
    finally:
        store.close()


def test_sqlite_damaged_row_of_ids_is_refused_with_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    url = f"sqlite:///{path}"
    store = open_store(url, namespace="app")
    try:
        store.save("s", "k", b"x", ["a", "b"], {"a": b"out"})
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            conn.execute("UPDATE nfbuilder_applied SET sizes = '[1]'")
        with pytest.raises(StateStoreError) as err:
            store.load("s", "k")
        assert str(err.value) == (
            f"state store {url}: a row of applied ids of state 's' key 'k' is damaged (2 ids, "
            "1 sizes adding up to 1 bytes of 3); check the file and the disk")
    finally:
        store.close()


def test_redis_unreachable_at_open_fails_fast_with_masked_url() -> None:
    started = time.monotonic()
    with pytest.raises(StateStoreError) as err:
        open_store("redis://user:secret@127.0.0.1:1/0", namespace="app")
    assert time.monotonic() - started < 5
    text = str(err.value)
    assert text.startswith("cannot connect to Redis state store redis://user:***@127.0.0.1:1/0: ")
    assert text.endswith("; is redis-server running at 127.0.0.1:1 and reachable from here?")
    assert "secret" not in text


def test_redis_url_with_decode_responses_is_refused(redis_server: RedisServer) -> None:
    with pytest.raises(StateStoreError, match="sets decode_responses, but snapshots are binary"):
        open_store(redis_server.url + "?decode_responses=True", namespace="app")


def test_redis_layout_is_one_hash_per_key(redis_server: RedisServer) -> None:
    store = open_store(redis_server.url, namespace="app")
    store.save("counts", "user:1", b"7", ["m-1-0"])
    client = redis.Redis.from_url(redis_server.url)
    assert hash_name("app", "counts", "user:1") == "nfbuilder:app:counts:user:1"
    stored = client.hgetall("nfbuilder:app:counts:user:1")
    assert stored[b"data"] == b"7" and json.loads(stored[b"ids"]) == ["m-1-0"]
    # the ids kept by time, scored by when they were saved
    (member, at), = client.zrange(times_name("app", "counts", "user:1"), 0, -1, withscores=True)
    assert times_name("app", "counts", "user:1") == "nfbuilder-ids:app:counts:user:1"
    assert member == b"m-1-0" and abs(at - time.time()) < 60
    client.close()
    store.close()


def test_redis_load_reads_the_snapshot_and_its_ids_as_one_save_left_them(
    redis_server: RedisServer
) -> None:
    """The load's two reads (the hash, then the times) are one MULTI/EXEC, so another
    process's save cannot land between them."""
    store = open_store(redis_server.url, namespace="app")
    try:
        store.save("s", "k", b"count=1", ["m-1"])
        client = store._client  # type: ignore[attr-defined]
        made: list[Any] = []
        real_pipeline = client.pipeline

        def recorded(transaction: bool = True, **kwargs: Any) -> Any:
            pipe = real_pipeline(transaction=transaction, **kwargs)
            real_execute = pipe.execute

            def execute(*args: Any, **kw: Any) -> Any:  # what it sends, in one MULTI/EXEC?
                made.append((transaction, [c[0][0] for c in pipe.command_stack]))
                return real_execute(*args, **kw)

            pipe.execute = execute
            return pipe

        client.pipeline = recorded
        reads = {name: 0 for name in ("hgetall", "zrange", "get", "hget")}
        for name in reads:  # any read outside the pipeline would be a second round trip
            real = getattr(client, name)

            def counted(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
                reads[_name] += 1
                return _real(*args, **kw)

            setattr(client, name, counted)
        assert store.load("s", "k") == Snapshot(b"count=1", ("m-1",))
        assert made == [(True, ["HGETALL", "ZRANGE"])]
        assert reads == {name: 0 for name in reads}
    finally:
        store.close()


def test_redis_snapshot_survives_a_server_restart(redis_server: RedisServer) -> None:
    store = open_store(redis_server.url, namespace="app")
    store.save("counts", "apple", b"\x00snap", ["v-1-0"])
    redis_server.restart()
    assert store.load("counts", "apple") == Snapshot(b"\x00snap", ("v-1-0",))
    # The script cache is empty after a restart: EVALSHA gets NOSCRIPT and reloads it.
    store.save("counts", "apple", b"\x00snap2", ["v-2-0"])
    store.close()
    fresh = open_store(redis_server.url, namespace="app")
    assert fresh.load("counts", "apple") == Snapshot(b"\x00snap2", ("v-1-0", "v-2-0"))
    fresh.close()


def test_redis_failing_script_writes_nothing(redis_server: RedisServer) -> None:
    store = open_store(redis_server.url, namespace="app")
    store.save("s", "k", b"old", ["a"])
    client = redis.Redis.from_url(redis_server.url)
    client.hset(hash_name("app", "s", "k"), "ids", "not json")
    with pytest.raises(StateStoreError) as err:
        store.save("s", "k", b"new", ["b"])
    assert str(err.value).startswith(
        f"cannot save state 's' key 'k' to Redis state store {redis_server.url}: ResponseError: "
    )
    assert str(err.value).endswith("; check the Redis server's log and configuration")
    assert client.hget(hash_name("app", "s", "k"), "data") == b"old"
    client.close()
    store.close()


class CuttingProxy:
    """A TCP proxy to Redis that cuts the connection in the middle of any command that
    carries `marker`, so Redis receives half a command and the client loses its connection."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.marker: bytes | None = None
        self.cuts = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, may_cut: bool) -> None:
        tail = b""
        try:
            while chunk := src.recv(65536):
                marker = self.marker
                window = tail + chunk
                if may_cut and marker is not None and marker in window:
                    dst.sendall(chunk[: max(0, window.index(marker) - len(tail))])
                    self.cuts += 1
                    return
                dst.sendall(chunk)
                tail = window[-64:]
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


def test_redis_interrupted_save_keeps_old_snapshot_and_ids_together(
    redis_server: RedisServer,
) -> None:
    proxy = CuttingProxy(redis_server.port)
    proxied = f"redis://127.0.0.1:{proxy.port}/0"
    store = open_store(proxied, namespace="app", timeout=0.5)
    direct = redis.Redis.from_url(redis_server.url)
    try:
        store.save("s", "k", b"old", ["m-1"])
        proxy.marker = b"CUT-HERE"
        with pytest.raises(StateStoreError) as err:
            store.save("s", "k", b"new-CUT-HERE", ["m-2"])
        assert str(err.value).startswith(
            f"cannot save state 's' key 'k' to Redis state store {proxied} "
            f"(still failing after retrying for 0.5 s): ConnectionError: "
        )
        assert str(err.value).endswith(
            f"; is redis-server running at 127.0.0.1:{proxy.port} and reachable from here?"
        )
        assert proxy.cuts >= 2  # the save was retried, and every attempt was cut
        stored = direct.hgetall(hash_name("app", "s", "k"))
        assert stored == {b"data": b"old", b"ids": b'["m-1"]'}
        proxy.marker = None
        store.save("s", "k", b"new-CUT-HERE", ["m-2"])
        assert store.load("s", "k") == Snapshot(b"new-CUT-HERE", ("m-1", "m-2"))
    finally:
        store.close()
        direct.close()
        proxy.close()


def test_redis_saves_ride_through_a_server_restart(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(redis_server.url, namespace="app", id_window=100_000, timeout=20)
    restarted = threading.Event()

    def restart() -> None:
        redis_server.restart()
        restarted.set()

    restarter = threading.Thread(target=restart)
    deadline = time.monotonic() + 20
    count = after_restart = 0
    with caplog.at_level(logging.WARNING, logger="nfbuilder.state"):
        while after_restart < 20:
            if count == 20:
                restarter.start()
            store.save("counts", "k", str(count).encode(), [f"m-{count}"])
            count += 1
            after_restart += restarted.is_set()
            assert time.monotonic() < deadline, "saves did not recover from the restart"
    restarter.join()
    assert any("retrying for up to 20 s" in r.getMessage() for r in caplog.records)
    snap = store.load("counts", "k")
    assert snap == Snapshot(str(count - 1).encode(), tuple(f"m-{i}" for i in range(count)))
    store.close()


def _persistence_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "persistence" in r.getMessage()]


def test_redis_without_persistence_warns_at_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_redis_server(tmp_path / "redis", appendonly=False)  # --save '' too
    try:
        with caplog.at_level(logging.WARNING, logger="nfbuilder.state"):
            open_store(server.url, namespace="app").close()
    finally:
        server.stop()
    assert _persistence_warnings(caplog) == [
        f"state store {server.url}: Redis persistence is off (save '' and appendonly no): every "
        "state resets when redis-server restarts; set appendonly yes (or a save schedule) in its "
        "configuration"
    ]


def test_redis_with_an_aof_does_not_warn_about_persistence(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="nfbuilder.state"):
        open_store(redis_server.url, namespace="app").close()
    assert _persistence_warnings(caplog) == []


def test_redis_refusing_config_skips_the_persistence_check(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_redis_server(tmp_path / "redis", appendonly=False)
    admin = redis.Redis.from_url(server.url)
    try:
        # a managed Redis: the application's user may not run CONFIG
        admin.execute_command("ACL", "SETUSER", "app", "on", ">pw", "~*", "+@all", "-config")
        url = f"redis://app:pw@127.0.0.1:{server.port}/0"
        with caplog.at_level(logging.DEBUG, logger="nfbuilder.state"):
            store = open_store(url, namespace="app")
        store.save("s", "k", b"x", ["m-1"])  # the store itself works
        assert store.load("s", "k") == Snapshot(b"x", ("m-1",))
        store.close()
    finally:
        admin.close()
        server.stop()
    assert _persistence_warnings(caplog) == []
    skipped = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(m.startswith("state store redis://app:***@127.0.0.1:") and
               "cannot read CONFIG" in m and m.endswith("; persistence not checked")
               for m in skipped), skipped


# ---------------------------------------------------------------- the redis-server helper


def test_missing_redis_server_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="redis-server is not on PATH"):
        require_redis_server()


def test_missing_redis_server_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set: the Redis state store tests"):
        require_redis_server()


def test_outputs_are_kept_with_their_ids_and_leave_with_them(open_kind: OpenStore) -> None:
    """Each applied id's outputs are stored in the same write and dropped when the id leaves
    the window, so a redelivered message can have its outputs re-emitted."""
    store = open_kind(id_window=3, id_retention_s=0)
    store.save("s", "k", b"1", ["a", "b"], {"a": b"out-a", "b": b""})
    store.save("s", "k", b"2", ["c", "d"], {"c": b"out-c", "d": b"out-d"})
    snap = store.load("s", "k")
    assert snap is not None
    assert snap.applied_ids == ("b", "c", "d")
    assert dict(snap.outputs) == {"b": b"", "c": b"out-c", "d": b"out-d"}


def test_saving_outputs_again_is_idempotent(open_kind: OpenStore) -> None:
    store = open_kind(id_window=4, id_retention_s=0)
    for _ in range(2):  # a retried save after a lost reply
        store.save("s", "k", b"x", ["a"], {"a": b"A"})
    snap = store.load("s", "k")
    assert snap is not None and snap.applied_ids == ("a",) and dict(snap.outputs) == {"a": b"A"}


# ---------------------------------------------------------------- fencing


def test_a_save_under_a_stale_claim_is_refused_and_writes_nothing(open_kind: OpenStore) -> None:
    old_owner = open_kind()
    # two processes on one store (memory:// lives in one process: the same object)
    new_owner = open_kind() if old_owner.durable else old_owner
    first = old_owner.claim("s", 1)
    old_owner.save("s", "k", b"by old", ["m-1"], fence=(1, first))
    second = new_owner.claim("s", 1)  # a replacement pod takes partition 1 over
    assert second > first
    with pytest.raises(FencedError) as err:
        old_owner.save("s", "k", b"lost update", ["m-2"], fence=(1, first))
    assert "partition 1 was claimed by a newer process (this one holds epoch" in str(err.value)
    assert new_owner.load("s", "k") == Snapshot(b"by old", ("m-1",))  # nothing written
    new_owner.save("s", "k", b"by new", ["m-2"], fence=(1, second))
    assert new_owner.load("s", "k") == Snapshot(b"by new", ("m-1", "m-2"))
    # other partitions are claimed on their own; saves without a fence are not checked
    assert old_owner.claim("s", 0) == 1
    old_owner.save("s", "other", b"x", ["m-3"])
