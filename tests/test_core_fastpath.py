"""The step core's object stage (``process_object`` / ``stage``) and its shortcuts: each says
and returns exactly what ``process`` says and returns, minus the work that has no effect."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

import nfbuilder as wallaroo
from nfbuilder.codec import Codec
from nfbuilder.plan import MapVertex, StateVertex, TcpSinkVertex, Vertex, plan
from nfbuilder.runtime.core import Out, VertexProgram
from nfbuilder.runtime.errors import UserCodeError
from nfbuilder.runtime.state import open_store
from nfbuilder.runtime.state.signing import PREFIX
from nfbuilder.runtime.statetable import StateTable
from nfbuilder.topology import Application, from_actions

CODEC = Codec.for_module(None)
calls: list[str] = []


@wallaroo.decoder(header_length=4, length_fmt=">I")
def text(bs: bytes) -> str:
    return bs.decode()


@wallaroo.computation_multi(name="split")
def split(data: str) -> list[str | None]:
    return [w or None for w in data.split(" ")]  # empty words become None: skipped


@wallaroo.partition
def first(data: str) -> str:
    calls.append(data)
    return data[0]


class Words:
    def __init__(self) -> None:
        self.seen: dict[str, int] = {}


@wallaroo.state_computation(name="count")
def count(data: str, state: Words) -> tuple[tuple[str, int], bool]:
    state.seen[data] = state.seen.get(data, 0) + 1
    return ((data, state.seen[data]), True)


@wallaroo.encoder
def line(data: tuple[str, int]) -> bytes:
    return f"{data[0]}={data[1]}\n".encode()


@wallaroo.encoder
def number(data: Any) -> Any:
    return 7


@wallaroo.computation(name="pass on")
def pass_on(data: Any) -> Any:
    return data


def _app(encoder: Any = line, after_state: Any = None) -> Application:
    """split -> count (partitioned state) [-> after_state] -> sink; the vertex before the sink
    encodes."""
    ab = wallaroo.ApplicationBuilder("fast")
    ab.new_pipeline("p", wallaroo.TCPSourceConfig("127.0.0.1", "7010", text))
    ab.to_parallel(split)
    ab.to_state_partition(count, Words, "words", first, None)
    if after_state is not None:
        ab.to(after_state)
    ab.to_sink(wallaroo.TCPSinkConfig("127.0.0.1", "7002", encoder))
    return from_actions(ab.build())


def _programs(app: Application, store: Any = None) -> dict[str, VertexProgram]:
    table = StateTable(store, CODEC)
    vertices: list[Vertex] = list(plan(app).vertices())
    role = {MapVertex: "map", StateVertex: "state", TcpSinkVertex: "sink"}
    out: dict[str, VertexProgram] = {}
    for v in vertices:
        r = role.get(type(v))
        if r is not None:
            out["after" if r in out else r] = VertexProgram(v, CODEC, table)
    return out


def test_out_is_a_plain_tuple() -> None:
    out = Out(b"v", ("k",))
    assert out == (b"v", ("k",), (), None) and out.value == b"v" and out.tags == ()
    value, keys, tags, event_time_ns = out
    assert (value, keys, tags, event_time_ns) == (b"v", ("k",), (), None)


def test_object_stage_says_what_process_says() -> None:
    calls.clear()
    progs = _programs(_app())
    split_v = next(v for k, v in progs.items() if k not in ("state", "sink"))
    as_bytes = split_v.process(0, CODEC.dumps("a  bb a"))
    as_objects = split_v.process_object(0, "a  bb a", serialize=False)
    assert [o.value for o in as_bytes] == [CODEC.dumps(w) for w in ("a", "bb", "a")]
    assert as_objects == [Out("a", ("a",)), Out("bb", ("b",)), Out("a", ("a",))]
    assert [o.keys for o in as_bytes] == [o.keys for o in as_objects]
    assert split_v.stage(0)("a  bb a", "", None, False) == as_objects
    # the state vertex encodes for the sink: its outputs are bytes in both modes
    state = progs["state"]
    assert state.process_object(0, "a", "", "a", serialize=False) == [Out(b"a=1\n")]
    assert state.process(0, CODEC.dumps("a")) == [Out(b"a=2\n")]
    # and the sink writes what it gets
    assert progs["sink"].process(0, b"a=2\n") == [Out(b"a=2\n")]


def test_a_given_key_is_used_instead_of_calling_the_partition_function() -> None:
    state = _programs(_app())["state"]
    calls.clear()
    assert state.process_object(0, "apple", "", "a", serialize=False) == [Out(b"apple=1\n")]
    assert calls == []
    assert state.process(0, CODEC.dumps("avocado")) == [Out(b"avocado=1\n")]
    assert calls == ["avocado"]
    assert state.states.get("words", "a").seen == {"apple": 1, "avocado": 1}


def test_without_a_store_no_ids_or_outputs_are_recorded() -> None:
    state = _programs(_app())["state"]
    for n in range(3):
        state.process_object(0, "apple", f"v-{n}-0", "a")
    entry = state.states.entry(state.vertex.state, "a")  # type: ignore[attr-defined]
    assert entry.pending == {} and entry.persisted == {}
    assert not state.states.durable
    # the same id again is applied again: nothing could have been redelivered
    state.process_object(0, "apple", "v-0-0", "a")
    assert entry.obj.seen == {"apple": 4} and state.replayed == 0


def test_object_mode_records_serialized_outputs_and_replays_objects(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    store = open_store(url, namespace="t")
    try:
        # a step after the state: the state vertex passes objects on (it does not encode)
        state = _programs(_app(after_state=pass_on), store)["state"]
        assert state.process_object(0, "apple", "v-1-0", serialize=False) == [Out(("apple", 1))]
    finally:
        store.close()
    again_store = open_store(url, namespace="t")
    try:
        again = _programs(_app(after_state=pass_on), again_store)["state"]
        assert again.process_object(0, "apple", "v-1-0", serialize=False) == [Out(("apple", 1))]
        assert again.process(0, CODEC.dumps("apple"), "v-1-0") == [
            Out(CODEC.dumps(("apple", 1)))]
        assert again.replayed == 2
        assert again.states.get("words", "a").seen == {"apple": 1}
    finally:
        again_store.close()


def test_dsl_wrappers_are_called_through_but_overrides_are_honoured() -> None:
    class Loud(type(split)):  # type: ignore[misc]
        def compute_multi(self, data: Any) -> Any:
            return [data.upper()]

    loud = Loud(lambda data: [data], "split")
    ab = wallaroo.ApplicationBuilder("loud")
    ab.new_pipeline("p", wallaroo.TCPSourceConfig("127.0.0.1", "7010", text))
    ab.to(loud)
    ab.to(pass_on)
    ab.to_sink(wallaroo.TCPSinkConfig("127.0.0.1", "7002", number))
    app = from_actions(ab.build())
    vertex = next(v for v in plan(app).vertices() if isinstance(v, MapVertex))
    prog = VertexProgram(vertex, CODEC, StateTable(None, CODEC))
    assert prog.process_object(0, "hi", serialize=False) == [Out("HI")]


def test_errors_read_the_same_from_the_object_stage() -> None:
    progs = _programs(_app(number))
    with pytest.raises(UserCodeError, match=r"pipeline 'p' encoder: .*number.* must return bytes "
                       r"or str, got int"):
        progs["state"].process_object(0, "a", "", "a", serialize=False)
    with pytest.raises(UserCodeError, match=r"pipeline 'p', step 'count': .*count.* raised "
                       r"TypeError"):
        progs["state"].process_object(0, ["unhashable"], "", "a", serialize=False)
    with pytest.raises(UserCodeError, match=r"pipeline 'p', step 'count': .*first.* raised "
                       r"TypeError"):
        progs["state"].process_object(0, 5)


def test_a_vertex_of_several_pipelines_needs_the_pipeline() -> None:
    ab = wallaroo.ApplicationBuilder("two")
    for i in range(2):
        ab.new_pipeline(f"p{i}", wallaroo.TCPSourceConfig("127.0.0.1", str(7010 + i), text))
        ab.to_state_partition(count, Words, "words", first, None)
        ab.to_sink(wallaroo.TCPSinkConfig("127.0.0.1", str(7002 + i), line))
    app = from_actions(ab.build())
    vertex = next(v for v in plan(app).vertices() if isinstance(v, StateVertex))
    prog = VertexProgram(vertex, CODEC, StateTable(None, CODEC))
    assert prog.process_object(1, "x", serialize=False)[0].value == b"x=1\n"  # encoded
    with pytest.raises(UserCodeError, match=r"serves pipelines \[0, 1\] and got a message for "
                       r"pipeline None; the message lost its pipeline metadata"):
        prog.process_object(None, "x")


@pytest.mark.parametrize("outs", [
    [Out(b"apple => 1\n")],  # the usual record: one plain output, its bytes after a marker
    [Out(b"")],
    [Out(b"\x00starts with the marker")],
    [Out(b"nfb1 after the marker, a record would start as a signed blob does")],
    [Out(b"v", ("k",))],
    [Out(b"v", (), ("t",))],
    [Out(b"v", (), (), 7)],
    [Out(b"a"), Out(b"b")],
])
def test_recorded_outputs_replay_as_they_were(outs: list[Out]) -> None:
    prog = _programs(_app())["state"]
    recorded = prog._record(outs, True)
    assert prog._replay(recorded, True) == outs
    plain = len(outs) == 1 and outs[0][1:] == ((), (), None)
    assert recorded.startswith(b"\x00") == (plain and not outs[0].value.startswith(b"nfb1"))
    assert not recorded.startswith(PREFIX)  # what a store without a key refuses as signed
    # a record written before the single-output form (always a pickle) still replays
    assert prog._replay(pickle.dumps([tuple(o) for o in outs], protocol=5), True) == outs


def test_recorded_objects_replay_as_objects() -> None:
    prog = _programs(_app(after_state=pass_on))["state"]
    recorded = prog._record([Out(("apple", 1))], False)
    assert recorded == b"\x00" + CODEC.dumps(("apple", 1))
    assert prog._replay(recorded, False) == [Out(("apple", 1))]
    assert prog._replay(recorded, True) == [Out(CODEC.dumps(("apple", 1)))]
