"""Ordered vertices in numa's batch map mode: responses held until the batch's EOT, state saved
once per key per batch before it is answered, a failed step rolled back to its pre-image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import wallaroo_objects as w

import nfbuilder as wallaroo
from nfbuilder import ApplicationBuilder
from nfbuilder._proto import map_pb2
from nfbuilder.codec import Codec
from nfbuilder.plan import DEAD_LETTER, plan
from nfbuilder.runtime.core import VertexProgram
from nfbuilder.runtime.messages import Result
from nfbuilder.runtime.servicers.mapper import _batch_answers
from nfbuilder.runtime.state.store import open_store
from nfbuilder.runtime.statetable import StateTable
from nfbuilder.topology import from_actions


def _request(i: int) -> map_pb2.MapRequest:
    return map_pb2.MapRequest(id=f"m-{i}", request=map_pb2.MapRequest.Request(value=b"%d" % i))


EOT = map_pb2.MapRequest(status=map_pb2.TransmissionStatus(eot=True))


def test_a_batch_is_answered_at_its_eot_after_end_of_batch() -> None:
    calls: list[str] = []

    def handler(datum: Any) -> list[Result]:
        calls.append(datum.id)
        return [Result(datum.value)]

    def end_of_batch() -> None:
        calls.append("saved")

    handler.end_of_batch = end_of_batch  # type: ignore[attr-defined]

    def answer(request: map_pb2.MapRequest) -> map_pb2.MapResponse:
        return map_pb2.MapResponse(id=request.id,
                                   results=[map_pb2.MapResponse.Result(value=request.request.value)])

    answer_many = _batch_answers(answer, handler)()
    assert [answer_many(_request(i)) for i in range(3)] == [[], [], []]  # held back
    assert calls == []  # nothing saved before the EOT
    out = answer_many(EOT)
    assert calls == ["saved"]  # saved before the batch is answered
    assert [r.id for r in out[:3]] == ["m-0", "m-1", "m-2"]
    assert out[3].status.eot and len(out) == 4
    assert answer_many(EOT)[0].status.eot  # an empty batch: just the EOT
    assert calls == ["saved", "saved"]
    # each call (stream) holds its own batch
    other = _batch_answers(answer, handler)()
    assert other(_request(9)) == [] and answer_many(EOT) == [out[3]]


class Box:
    def __init__(self) -> None:
        self.items: list[str] = []


@wallaroo.state_computation(name="keep")
def keep(x: str, box: Box) -> Any:
    box.items.append(x)  # changes the state, then fails on "bad"
    if x == "bad":
        raise ValueError(x)
    return len(box.items), True


def _state_program(tmp_path: Path) -> VertexProgram:
    ab = ApplicationBuilder("App").new_pipeline("p", w.tcp_source())
    ab.to_stateful(keep, Box, "box").to_sink(w.tcp_sink()).on_error("dead-letter", 0)
    _, vertex = plan(from_actions(ab.build())).find("box")
    codec = Codec.for_module(None)
    store = open_store(f"sqlite:///{tmp_path / 's.db'}", namespace="t")
    return VertexProgram(vertex, codec, StateTable(store, codec))


class CountingSaves:
    def __init__(self, store: Any) -> None:
        self.store, self.saves = store, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.saves += 1
        self.store.save(*args, **kwargs)

    def save_many(self, saves: Any, fence: Any = None) -> None:
        self.saves += len(saves)
        self.store.save_many(saves, fence)


def test_held_saves_are_one_per_key_per_batch_with_every_id(tmp_path: Path) -> None:
    program = _state_program(tmp_path)
    table = program.states
    counting = CountingSaves(table.store)
    table.store = counting  # type: ignore[assignment]
    table.defer_saves()
    codec = program.codec
    for i in range(5):
        program.handle(None, codec.dumps(f"x{i}"), f"m-{i}")
    assert counting.saves == 0 and table.entries("box")["_"].held
    table.flush()
    assert counting.saves == 1 and not table.entries("box")["_"].held
    snap = counting.store.load("box", "_")
    assert snap is not None and list(snap.applied_ids) == [f"m-{i}" for i in range(5)]
    assert codec.loads(snap.data).items == [f"x{i}" for i in range(5)]


def test_a_step_failing_on_a_held_key_goes_back_to_before_it(tmp_path: Path) -> None:
    program = _state_program(tmp_path)
    program.states.defer_saves()
    codec = program.codec
    program.handle(None, codec.dumps("a"), "m-1")
    assert program.handle(None, codec.dumps("bad"), "m-2")[0].tags == (DEAD_LETTER,)
    program.handle(None, codec.dumps("b"), "m-3")
    program.states.flush()
    assert program.states.get("box", "_").items == ["a", "b"]
    snap = program.states.store.load("box", "_")  # type: ignore[union-attr]
    assert snap is not None and codec.loads(snap.data).items == ["a", "b"]
