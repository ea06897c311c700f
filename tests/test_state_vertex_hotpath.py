"""The state vertex's per-message and per-batch shortcuts: each must send, sign and store exactly
what the plain path did (the payload answer without a Datum, per-batch signing, batched SQLite
statements, the cheaper id-window merge and expiry)."""

from __future__ import annotations

import hmac
import random
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nfbuilder._proto import map_pb2, metadata_pb2
from nfbuilder.codec import Codec
from nfbuilder.loader import load_app
from nfbuilder.local.rpc import metadata_pb
from nfbuilder.local.wire import map_request
from nfbuilder.runtime.messages import Datum, FrozenMetadata, Result
from nfbuilder.runtime.servicers.convert import add_map_results, write_metadata
from nfbuilder.runtime.servicers.mapper import map_answer
from nfbuilder.runtime.state import Save, StateStore, merge_ids, open_store
from nfbuilder.runtime.state.signing import PREFIX, Seal, record
from nfbuilder.runtime.state.sqlite import SqliteStore
from nfbuilder.runtime.statetable import StateTable
from nfbuilder.runtime.vertex import build_program, map_handler, pipeline_metadata
from nfbuilder.topology import StateSpec

WORD_COUNT = "apps/word_count.py"
ARGS = ["--in", "127.0.0.1:7000", "--out", "127.0.0.1:7001"]
Wire = map_pb2.MapResponse.Result


# ---------------------------------------------------------------- the payload answer


def _requests(codec: object, words: list[str]) -> list[map_pb2.MapRequest]:
    meta = metadata_pb(pipeline_metadata(0)).SerializeToString()
    dumps = codec.dumps  # type: ignore[attr-defined]
    return [map_pb2.MapRequest.FromString(map_request(
        f"split-{i}-0", (w[0],), dumps(w), 1_764_590_000_000_000_000 + i, None, None, meta))
        for i, w in enumerate(words)]


@pytest.mark.parametrize("vertex", ["word-totals", "split-into-words"])
def test_the_payload_answer_sends_what_the_datum_answer_sends(tmp_path: Path,
                                                              vertex: str) -> None:
    words = ["apple", "Banana split", "apple", "cherry", "!bang", "apple pie"]
    answers = []
    for store in ("a", "b"):  # two programs, each with a store of its own
        loaded = load_app(WORD_COUNT, ARGS)
        program = build_program(loaded, vertex, fuse=False,
                                state_store=f"sqlite:///{tmp_path / store}.db")
        handler = map_handler(program)
        assert callable(handler.payload)
        # a plain function of the Datum: the generic path, with every field read
        generic = (lambda h: lambda datum: h(datum))(handler)
        answer = map_answer(handler if store == "a" else generic)
        answers.append([answer(r).SerializeToString(deterministic=True)
                        for r in _requests(program.codec, words)])
    assert answers[0] == answers[1]
    # and they say the step's outputs: a count per word, or the words of each line
    results = [r.value for raw in answers[0] for r in map_pb2.MapResponse.FromString(raw).results]
    if vertex == "word-totals":
        assert results[0] == b"apple => 1\n" and results[2] == b"apple => 2\n"
        assert len(results) == len(words)
    else:
        assert len(results) == sum(len(w.split()) for w in words)


def test_a_handler_without_payload_gets_the_whole_datum() -> None:
    seen: list[Datum] = []

    def handler(datum: Datum) -> list[Result]:
        seen.append(datum)
        return [Result(datum.value, keys=datum.keys)]

    meta = metadata_pb(FrozenMetadata({"g": {"k": b"v"}})).SerializeToString()
    request = map_pb2.MapRequest.FromString(
        map_request("v-1-0", ("k1",), b"x", 5_000_000_001, 7_000_000_000, {"h": "1"}, meta))
    response = map_answer(handler)(request)
    assert response.id == "v-1-0" and response.results[0].keys == ["k1"]
    (datum,) = seen
    assert (datum.id, datum.keys, datum.value, datum.event_time_ns, datum.watermark_ns) == (
        "v-1-0", ("k1",), b"x", 5_000_000_001, 7_000_000_000)
    assert dict(datum.headers) == {"h": "1"} and datum.user_metadata == {"g": {"k": b"v"}}


def test_results_sharing_metadata_each_carry_it() -> None:
    meta = FrozenMetadata({"g": {"k": b"v"}})
    plain = {"p": {"k": b"1"}}
    results = [Result(b"a", user_metadata=meta), Result(b"b", user_metadata=meta),
               Result(b"c", user_metadata=FrozenMetadata({})), Result(b"d", user_metadata=plain),
               Result(b"e", user_metadata=plain), Result(b"f")]
    expected = map_pb2.MapResponse(id="v", results=[
        Wire(value=r.value, metadata=write_metadata(r.user_metadata)) for r in results])
    response = map_pb2.MapResponse(id="v")
    add_map_results(response.results, results)
    assert response.SerializeToString(deterministic=True) == expected.SerializeToString(
        deterministic=True)
    assert [r.HasField("metadata") for r in response.results] == [True, True, False, True,
                                                                   True, False]
    assert write_metadata(FrozenMetadata({})) is None
    assert write_metadata(meta) == metadata_pb2.Metadata(
        user_metadata={"g": metadata_pb2.KeyValueGroup(key_value={"k": b"v"})})


# ---------------------------------------------------------------- signing a batch


IDS = ["m-1", 'q"uote\\d', "ünï-cödé", "m-4"]


def test_sign_outputs_signs_each_id_as_sign_does() -> None:
    outputs = {"m-1": b"one", 'q"uote\\d': b"", "ünï-cödé": b"\x00\x80three"}  # m-4: none
    for key in (b"secret", None):
        seal = Seal(key, shown="sqlite:///s.db", namespace="app ns")
        signed = seal.sign_outputs(outputs, IDS, "word totals", "k\n")
        assert list(signed) == IDS
        assert signed == {i: seal.sign(outputs.get(i, b""), "word totals", "k\n", i)
                          for i in IDS}
        for i in IDS:
            assert seal.check(signed[i], "word totals", "k\n", i) == outputs.get(i, b"")


def test_a_signed_blob_is_the_documented_hmac() -> None:
    seal = Seal(b"secret", shown="s", namespace="app")
    for msg_id in (None, "m-1"):
        mac = hmac.digest(b"secret", PREFIX + record("app", "s", "k", msg_id) + b"\n" + b"blob",
                          "sha256")
        assert seal.sign(b"blob", "s", "k", msg_id) == PREFIX + mac + b"blob"
    assert seal.sign_outputs({"m-1": b"blob"}, ["m-1"], "s", "k")["m-1"] == seal.sign(
        b"blob", "s", "k", "m-1")


# ---------------------------------------------------------------- the id window


def test_merge_ids_given_the_known_ids_is_merge_ids() -> None:
    rng = random.Random(3)
    for _ in range(500):
        old = list(dict.fromkeys(f"i{rng.randrange(40)}" for _ in range(rng.randrange(12))))
        new = [f"i{rng.randrange(40)}" for _ in range(rng.randrange(6))]
        known = set(old) | {f"i{rng.randrange(40)}" for _ in range(rng.randrange(4))}
        window = rng.randrange(1, 10)
        assert merge_ids(old, new, window, known=known) == merge_ids(old, new, window)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 's.db'}"
    opened = open_store(url, namespace="app", id_window=2, id_retention_s=10)
    yield opened
    opened.close()


def test_ids_leave_once_out_of_the_window_and_older_than_the_retention(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [100.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])

    def save_at(at: float, ids: list[str]) -> tuple[str, ...]:
        clock[0] = at
        store.save("s", "k", b"x", ids, {i: i.encode() for i in ids})
        snap = store.load("s", "k")
        assert snap is not None and dict(snap.outputs) == {i: i.encode()
                                                           for i in snap.applied_ids}
        return snap.applied_ids

    assert save_at(100, ["a", "b", "c"]) == ("a", "b", "c")  # a, b: kept by time
    assert save_at(105, ["d"]) == ("a", "b", "c", "d")
    assert save_at(112, ["e"]) == ("d", "e")  # a, b, c: saved at 100, out of the window
    assert save_at(130, ["f"]) == ("e", "f")  # e is as old as d, but in the window


# ---------------------------------------------------------------- SQLite's batched statements


def _sqlite(tmp_path: Path, namespace: str) -> SqliteStore:
    store = open_store(f"sqlite:///{tmp_path / 's.db'}", namespace=namespace, id_window=3,
                       id_retention_s=0, environ={"NFBUILDER_STATE_KEY": "secret"})
    assert isinstance(store, SqliteStore)
    return store


def test_sqlite_save_many_stores_what_one_save_after_another_does(tmp_path: Path) -> None:
    saves = [Save("s", "a", b"a1", ["m1", "m2"], {"m1": b"o1"}),
             Save("s", "b", b"b1", ["m3"], {"m3": b"o3"}),
             Save("s", "a", b"a2", ["m2", "m4", "m5"], {"m2": b"o2", "m5": b"o5"}),
             Save("t", "a", b"t1", ["m6", "m6"])]
    one_by_one, batched = _sqlite(tmp_path, "one"), _sqlite(tmp_path, "many")
    for save in saves:
        one_by_one.save(*save)
    batched.save_many(saves)
    for name, key in (("s", "a"), ("s", "b"), ("t", "a")):
        a, b = one_by_one.load(name, key), batched.load(name, key)
        assert a is not None and b is not None
        assert (a.data, a.applied_ids, dict(a.outputs)) == (b.data, b.applied_ids,
                                                            dict(b.outputs))
    snap = batched.load("s", "a")
    assert snap is not None and snap.applied_ids == ("m2", "m4", "m5")
    assert dict(snap.outputs) == {"m2": b"o2", "m4": b"", "m5": b"o5"}


def test_sqlite_checkpoints_the_wal_every_4000_pages(tmp_path: Path) -> None:
    store = _sqlite(tmp_path, "app")
    store.save("s", "a", b"x", ["m1"])
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert store._conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (4000,)
    conn.close()


def test_an_entry_is_held_from_its_deferred_save_to_the_flush(tmp_path: Path) -> None:
    spec = StateSpec("tally", dict)
    table = StateTable(open_store(f"sqlite:///{tmp_path / 's.db'}", namespace="t"),
                       Codec.for_module(None))
    table.defer_saves()
    entry = table.entry(spec, "a")
    table.applied(spec, "a", entry, "m-1", save=False, outputs=b"")
    assert not entry.held  # nothing to save yet
    table.applied(spec, "a", entry, "m-2", save=True, outputs=b"")
    assert entry.held
    assert table.store is not None and table.store.load("tally", "a") is None  # held back
    table.flush()
    assert not entry.held
    snap = table.store.load("tally", "a")
    assert snap is not None and snap.applied_ids == ("m-1", "m-2")
