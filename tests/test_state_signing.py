"""Signed snapshots (NFBUILDER_STATE_KEY): what the SQLite and Redis stores refuse to unpickle.

Blobs are planted straight into the rows of a real SQLite file and the hashes of a real
redis-server, the way someone with write access to the database would.
"""

from __future__ import annotations

import json
import logging
import pickle
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from redis_server import RedisServer

from nfbuilder.codec import Codec
from nfbuilder.runtime.state import (
    KEY_ENV,
    Snapshot,
    StateIntegrityError,
    StateStore,
    open_store,
)
from nfbuilder.runtime.state.redis_store import hash_name
from nfbuilder.runtime.state.signing import PREFIX, Seal, state_key
from nfbuilder.runtime.statetable import StateTable
from nfbuilder.topology import StateSpec

CODEC = Codec.for_module(None)


class Tally:
    def __init__(self) -> None:
        self.n = 0


SPEC = StateSpec("tally", Tally)


class Plant:
    """A pickle whose loading creates the file `marker`: what an attacker's code would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


class Raw:
    """Direct access to the stored blobs, behind the store's back."""

    url: str

    def get(self, ns: str, state: str, key: str, msg_id: str | None = None) -> bytes:
        raise NotImplementedError

    def put(self, ns: str, state: str, key: str, blob: bytes, msg_id: str | None = None) -> None:
        raise NotImplementedError


class SqliteRaw(Raw):
    """The snapshot's row, or an id's outputs inside the row of the save that applied it."""

    def __init__(self, path: Path) -> None:
        self.url = f"sqlite:///{path}"
        self.path = path

    def get(self, ns: str, state: str, key: str, msg_id: str | None = None) -> bytes:
        with sqlite3.connect(self.path) as conn:
            if msg_id is None:
                row = conn.execute("SELECT data FROM nfbuilder_state WHERE namespace = ? AND "
                                   "state_name = ? AND key = ?", (ns, state, key)).fetchone()
                return bytes(row[0])
            _, ids, sizes, blob = self._applied(conn, ns, state, key, msg_id)
        start = sum(sizes[: ids.index(msg_id)])
        return bytes(blob[start:start + sizes[ids.index(msg_id)]])

    def put(self, ns: str, state: str, key: str, blob: bytes, msg_id: str | None = None) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            if msg_id is None:
                done = conn.execute("UPDATE nfbuilder_state SET data = ? WHERE namespace = ? "
                                    "AND state_name = ? AND key = ?", (blob, ns, state, key))
            else:
                rowid, ids, sizes, outputs = self._applied(conn, ns, state, key, msg_id)
                at = ids.index(msg_id)
                start = sum(sizes[:at])
                outputs = outputs[:start] + blob + outputs[start + sizes[at]:]
                sizes[at] = len(blob)
                done = conn.execute("UPDATE nfbuilder_applied SET sizes = ?, outputs = ? "
                                    "WHERE rowid = ?", (json.dumps(sizes), outputs, rowid))
            assert done.rowcount == 1  # the record exists: the plant replaces a real blob
        finally:
            conn.close()

    @staticmethod
    def _applied(conn: sqlite3.Connection, ns: str, state: str, key: str,
                 msg_id: str) -> tuple[int, list[str], list[int], bytes]:
        for rowid, ids, sizes, blob in conn.execute(
                "SELECT rowid, ids, sizes, outputs FROM nfbuilder_applied WHERE namespace = ? "
                "AND state_name = ? AND key = ? ORDER BY rowid DESC", (ns, state, key)):
            if msg_id in json.loads(ids):
                return rowid, json.loads(ids), json.loads(sizes), bytes(blob)
        raise AssertionError(f"no row holds {msg_id!r}")


class RedisRaw(Raw):
    def __init__(self, server: RedisServer) -> None:
        self.url = server.url
        self.client = redis.Redis.from_url(server.url)

    def get(self, ns: str, state: str, key: str, msg_id: str | None = None) -> bytes:
        found = self.client.hget(hash_name(ns, state, key), _field(msg_id))
        assert isinstance(found, bytes)
        return found

    def put(self, ns: str, state: str, key: str, blob: bytes, msg_id: str | None = None) -> None:
        name = hash_name(ns, state, key)
        assert self.client.hexists(name, _field(msg_id))
        self.client.hset(name, _field(msg_id), blob)


def _field(msg_id: str | None) -> str:
    return "data" if msg_id is None else f"o:{msg_id}"


@pytest.fixture(params=["sqlite", "redis"])
def raw(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Raw]:
    if request.param == "sqlite":
        yield SqliteRaw(tmp_path / "state.db")
    else:
        found = RedisRaw(request.getfixturevalue("redis_server"))
        yield found
        found.client.close()


@pytest.fixture
def opened() -> Iterator[list[StateStore]]:
    stores: list[StateStore] = []
    yield stores
    for store in stores:
        store.close()


@pytest.fixture
def open_(raw: Raw, opened: list[StateStore]) -> Any:
    def open_(namespace: str = "app") -> StateStore:
        store = open_store(raw.url, namespace=namespace)
        opened.append(store)
        return store
    return open_


def _refusal(url: str, what: str, why: str) -> str:
    return f"state store {url}: refusing to load the {what} of state 'tally' key 'k': {why}"


UNSIGNED = ("it is not signed (written without NFBUILDER_STATE_KEY, or by someone else); if the "
            "store was written before NFBUILDER_STATE_KEY was set, start over with an empty store "
            "(nfbuilder run --fresh, or delete this namespace's keys)")
MISMATCH = ("its signature does not match: NFBUILDER_STATE_KEY changed since it was written, or "
            "the bytes were altered or copied from another record; restore the key it was "
            "written with, or start over with an empty store (nfbuilder run --fresh, or delete "
            "this namespace's keys)")


def test_a_round_trip_with_a_key_returns_what_was_saved(
    raw: Raw, open_: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "key-a")
    store = open_()
    store.save("tally", "k", b"state", ["m1", "m2"], {"m1": b"out"})
    snap = store.load("tally", "k")
    assert snap == Snapshot(b"state", ("m1", "m2"))
    assert snap is not None and dict(snap.outputs) == {"m1": b"out", "m2": b""}
    stored = raw.get("app", "tally", "k")
    assert stored.startswith(PREFIX) and stored.endswith(b"state")
    assert len(stored) == len(PREFIX) + 32 + len(b"state")
    assert raw.get("app", "tally", "k", "m1").startswith(PREFIX)
    # a new process with the same key reads it back
    assert open_().load("tally", "k") == snap


def test_a_planted_pickle_is_refused_before_it_is_unpickled(
    raw: Raw, open_: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.setenv(KEY_ENV, "key-a")
    store = open_()
    store.save("tally", "k", CODEC.dumps(Tally()), ["m1"])
    raw.put("app", "tally", "k", pickle.dumps(Plant(marker)))
    with pytest.raises(StateIntegrityError) as err:
        StateTable(open_(), CODEC).entry(SPEC, "k")
    assert str(err.value) == _refusal(raw.url, "snapshot", UNSIGNED)
    assert not marker.exists()
    # the plant is real: in a store written without a key, the same blob runs the attacker's code
    monkeypatch.delenv(KEY_ENV)
    open_().save("tally", "k", CODEC.dumps(Tally()), ["m1"])
    raw.put("app", "tally", "k", pickle.dumps(Plant(marker)))
    StateTable(open_(), CODEC).entry(SPEC, "k")
    assert marker.exists()


def test_planted_recorded_outputs_are_refused_before_they_are_unpickled(
    raw: Raw, open_: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.setenv(KEY_ENV, "key-a")
    open_().save("tally", "k", CODEC.dumps(Tally()), ["m1"], {"m1": pickle.dumps([])})
    raw.put("app", "tally", "k", pickle.dumps(Plant(marker)), "m1")
    with pytest.raises(StateIntegrityError) as err:
        StateTable(open_(), CODEC).entry(SPEC, "k")
    assert str(err.value) == _refusal(raw.url, "recorded outputs of message 'm1'", UNSIGNED)
    assert not marker.exists()
    # in a store written without a key, replaying them (as core._replay does) runs the plant
    monkeypatch.delenv(KEY_ENV)
    open_().save("tally", "k", CODEC.dumps(Tally()), ["m1"], {"m1": pickle.dumps([])})
    raw.put("app", "tally", "k", pickle.dumps(Plant(marker)), "m1")
    recorded = StateTable(open_(), CODEC).entry(SPEC, "k").outputs_for("m1")
    assert recorded is not None
    pickle.loads(recorded)
    assert marker.exists()


@pytest.mark.parametrize("msg_id", [None, "m1"], ids=["snapshot", "outputs"])
def test_altered_bytes_are_refused(
    raw: Raw, open_: Any, monkeypatch: pytest.MonkeyPatch, msg_id: str | None
) -> None:
    monkeypatch.setenv(KEY_ENV, "key-a")
    store = open_()
    store.save("tally", "k", b"count=1", ["m1"], {"m1": b"out=1"})
    stored = raw.get("app", "tally", "k", msg_id)
    raw.put("app", "tally", "k", stored[:-1] + b"2", msg_id)
    with pytest.raises(StateIntegrityError, match="its signature does not match"):
        store.load("tally", "k")


@pytest.mark.parametrize(("ns", "state", "key"),
                         [("app", "tally", "other"), ("app", "t2", "k"), ("other", "tally", "k")])
def test_a_blob_copied_to_another_record_is_refused(
    raw: Raw, open_: Any, monkeypatch: pytest.MonkeyPatch, ns: str, state: str, key: str
) -> None:
    monkeypatch.setenv(KEY_ENV, "key-a")
    open_().save("tally", "k", b"admin", ["m1"], {"m1": b"out"})
    target = open_(ns)
    target.save(state, key, b"guest", ["m1"], {"m1": b"out"})
    raw.put(ns, state, key, raw.get("app", "tally", "k"))
    with pytest.raises(StateIntegrityError, match="its signature does not match"):
        target.load(state, key)


def test_outputs_copied_to_another_message_are_refused(
    raw: Raw, open_: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "key-a")
    store = open_()
    store.save("tally", "k", b"x", ["m1", "m2"], {"m1": b"one", "m2": b"two"})
    raw.put("app", "tally", "k", raw.get("app", "tally", "k", "m1"), "m2")
    with pytest.raises(StateIntegrityError) as err:
        store.load("tally", "k")
    assert str(err.value) == _refusal(raw.url, "recorded outputs of message 'm2'", MISMATCH)


def test_a_store_written_with_one_key_is_refused_with_another(
    raw: Raw, open_: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "key-a")
    open_().save("tally", "k", b"x", ["m1"])
    monkeypatch.setenv(KEY_ENV, "key-b")
    with pytest.raises(StateIntegrityError) as err:
        open_().load("tally", "k")
    assert str(err.value) == _refusal(raw.url, "snapshot", MISMATCH)
    monkeypatch.setenv(KEY_ENV, "key-a")  # the key restored: readable again
    assert open_().load("tally", "k") == Snapshot(b"x", ("m1",))


def test_a_signed_store_read_without_a_key_is_refused(
    raw: Raw, open_: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "key-a")
    open_().save("tally", "k", b"x", ["m1"])
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(StateIntegrityError) as err:
        open_().load("tally", "k")
    assert str(err.value) == _refusal(
        raw.url, "snapshot", "it is signed, but NFBUILDER_STATE_KEY is not set; set it to the "
        "key the store was written with")


def test_without_a_key_blobs_are_unsigned_and_opening_warns(
    raw: Raw, open_: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with caplog.at_level(logging.WARNING, logger="nfbuilder.state"):
        store = open_()
    warnings = [r.getMessage() for r in caplog.records if KEY_ENV in r.getMessage()]
    assert warnings == [
        f"state store {raw.url}: NFBUILDER_STATE_KEY is not set, so snapshots are trusted "
        "without a check: whoever can write the store can run code in this process when a "
        "snapshot is loaded; set NFBUILDER_STATE_KEY (e.g. from a Kubernetes Secret) to sign them"
    ]
    store.save("tally", "k", b"plain", ["m1"], {"m1": b"out"})
    assert raw.get("app", "tally", "k") == b"plain"
    assert raw.get("app", "tally", "k", "m1") == b"out"
    assert store.load("tally", "k") == Snapshot(b"plain", ("m1",))


def test_with_a_key_opening_does_not_warn(
    open_: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(KEY_ENV, "key-a")
    with caplog.at_level(logging.WARNING, logger="nfbuilder.state"):
        open_()
    assert not [r for r in caplog.records if KEY_ENV in r.getMessage()]


def test_a_memory_store_does_not_warn(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with caplog.at_level(logging.WARNING, logger="nfbuilder.state"):
        open_store("memory://", namespace="app").close()
    assert not [r for r in caplog.records if KEY_ENV in r.getMessage()]


def test_the_key_is_read_from_the_environment_only() -> None:
    assert state_key({KEY_ENV: "s3cret"}) == b"s3cret"
    assert state_key({KEY_ENV: ""}) is None
    assert state_key({}) is None


def test_a_truncated_blob_is_refused() -> None:
    seal = Seal(b"k", shown="sqlite:///s.db", namespace="app")
    blob = seal.sign(b"payload", "tally", "k")
    assert seal.check(blob, "tally", "k") == b"payload"
    with pytest.raises(StateIntegrityError, match="its signature does not match"):
        seal.check(blob[: len(PREFIX) + 5], "tally", "k")


@given(st.text(), st.text(), st.text(), st.none() | st.text())
def test_the_signed_record_is_the_json_list_of_its_fields(ns: str, name: str, key: str,
                                                          msg_id: str | None) -> None:
    from nfbuilder.runtime.state.signing import record

    assert record(ns, name, key, msg_id) == json.dumps([ns, name, key, msg_id]).encode()
