"""``nfbuilder.testing``: every example app end to end in-process, the step rules through the
harness, routing (tags, broadcast), state persistence, and the harness's own errors."""

from __future__ import annotations

import logging
import struct
import sys
from typing import Any

import pytest

import nfbuilder as wallaroo
from apps.data import APPS, frame, load
from nfbuilder.loader import AppLoadError
from nfbuilder.runtime.errors import UserCodeError
from nfbuilder.runtime.state import open_store
from nfbuilder.testing import run, run_app

ARGS = ["--in", "127.0.0.1:7010", "--out", "127.0.0.1:7002"]


def _app_args(data: Any) -> list[str]:
    ins = [("127.0.0.1", 7010 + i) for i in range(data.SOURCES)]
    return list(data.app_args(ins, [("127.0.0.1", 7002)]))[1:]  # without the program name


# -- every example app, validated by its independent data module ---------------------------
@pytest.mark.parametrize("serialize", [False, True], ids=["objects", "serialized"])
@pytest.mark.parametrize("name", APPS)
def test_example_app_outputs_validate(name: str, serialize: bool) -> None:
    data = load(name)
    msgs = data.inputs()
    result = run(f"apps/{name}.py", _app_args(data), {i: msgs[i] for i in data.SEND_ORDER},
                 serialize=serialize)
    assert result.outputs, f"{name}: no sink in the result"
    data.validate(data.parse_output(result.output()), msgs)


@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("name", ["word_count", "alphabet_partitioned", "sequence_window"])
def test_passing_objects_and_serializing_give_the_same_outputs(name: str, fuse: bool) -> None:
    data = load(name)
    msgs = data.inputs()
    feed = {i: msgs[i] for i in data.SEND_ORDER}
    objects = run(f"apps/{name}.py", _app_args(data), feed, fuse=fuse)
    serialized = run(f"apps/{name}.py", _app_args(data), feed, fuse=fuse, serialize=True)
    assert objects.outputs == serialized.outputs and objects.output()


def test_reverse_exact_order_and_sink_name() -> None:
    import reverse

    outs = run_app(reverse, ARGS, {"reverse": [frame(b"abc"), frame(b"hello")]})
    assert outs == {"sink": [b"cba\n", b"olleh\n"]}


def test_several_frames_in_one_item_and_app_as_function() -> None:
    import celsius

    one = b"".join(frame(struct.pack(">f", c)) for c in (0.0, 100.0))
    outs = run_app(celsius.application_setup, ARGS, {0: [one]})
    assert [struct.unpack(">f", o[4:])[0] for o in outs["sink"]] == [32.0, 212.0]


def test_alphabet_last_totals_and_live_state() -> None:
    data = load("alphabet")
    msgs = data.inputs(n=200)
    result = run("apps/alphabet.py", _app_args(data), {0: msgs[0]})
    last = dict(data.parse_output(result.output()))
    assert last == data.expected(msgs)
    votes = result.state("letter state")  # to_stateful: no key
    assert {k: v.votes for k, v in votes.votes_by_letter.items()} == data.expected(msgs)


def test_word_count_fuse_gives_the_same_outputs() -> None:
    data = load("word_count")
    msgs = {0: data.inputs(n=120)[0]}
    plain = run("apps/word_count.py", _app_args(data), msgs)
    fused = run("apps/word_count.py", _app_args(data), msgs, fuse=True)
    assert fused.outputs == plain.outputs
    assert len(plain.outputs["sink"]) == len(data.words([msgs[0]]))
    assert plain.state("word totals", "r").word_totals["river"] == data.expected([msgs[0]])["river"]


def test_kafka_source_bytes_are_record_values_and_sink_gets_values() -> None:
    data = load("celsius_kafka")
    values = [struct.pack(">f", 10.0), struct.pack(">f", 20.0)]
    outs = run_app("apps/celsius_kafka.py", _app_args(data), {0: values})
    assert data.parse_output(outs["sink"]) == [50.0, 68.0]


# -- small apps for the step rules ----------------------------------------------------------
@wallaroo.decoder(header_length=4, length_fmt=">I")
def text_or_none(bs: bytes) -> str | None:
    return None if bs == b"skip" else bs.decode()


@wallaroo.computation(name="drop odd")
def drop_odd(data: Any) -> Any:
    return None if len(data) % 2 else data


@wallaroo.computation_multi(name="bad multi")
def bad_multi(data: Any) -> Any:
    return ("not", "a list")


@wallaroo.encoder
def text_line(data: Any) -> bytes:
    return f"{data}\n".encode()


@wallaroo.encoder
def text_star(data: Any) -> bytes:
    return f"*{data}\n".encode()


class Tally:
    def __init__(self) -> None:
        self.n = 0


@wallaroo.state_computation(name="no tuple")
def no_tuple(data: Any, state: Tally) -> Any:
    return data


@wallaroo.state_computation(name="count and save")
def count_and_save(data: Any, state: Tally) -> tuple[int, bool]:
    state.n += 1
    return (state.n, True)


@wallaroo.state_computation(name="count no save")
def count_no_save(data: Any, state: Tally) -> tuple[int, bool]:
    state.n += 1
    return (state.n, False)


@wallaroo.partition
def first_letter(data: str) -> str:
    return data[0]


@wallaroo.computation(name="boom")
def boom(data: Any) -> Any:
    raise ValueError(f"cannot handle {data!r}")


def _linear(*steps: Any, decoder: Any = text_or_none) -> Any:
    """An application_setup: one TCP pipeline named 'p' through ``steps`` to one TCP sink."""

    def application_setup(args: list[str]) -> list[tuple]:
        ab = wallaroo.ApplicationBuilder("test app")
        ab.new_pipeline("p", wallaroo.TCPSourceConfig("127.0.0.1", "7010", decoder))
        for kind, *rest in steps:
            getattr(ab, kind)(*rest)
        ab.to_sink(wallaroo.TCPSinkConfig("127.0.0.1", "7002", text_line))
        return ab.build()

    return application_setup


def test_decoder_returning_none_filters() -> None:
    outs = run_app(_linear(), inputs={0: [frame(b"a"), frame(b"skip"), frame(b"b")]})
    assert outs == {"sink": [b"a\n", b"b\n"]}


def test_compute_returning_none_filters() -> None:
    outs = run_app(_linear(("to", drop_odd)), inputs={"p": ["ab", "abc", "abcd"]})
    assert outs == {"sink": [b"ab\n", b"abcd\n"]}


def test_objects_skip_the_decoder() -> None:
    # "skip" as an object is not filtered: the decoder never sees it
    outs = run_app(_linear(), inputs={0: ["skip", frame(b"skip")]})
    assert outs == {"sink": [b"skip\n"]}


def test_compute_multi_returning_a_non_list_raises_naming_the_step() -> None:
    with pytest.raises(UserCodeError) as info:
        run_app(_linear(("to", bad_multi)), inputs={0: ["x"]})
    text = str(info.value)
    assert "pipeline 'p', step 'bad multi': compute_multi must return a list, got tuple" in text
    assert "bad_multi" in text
    assert "(input item 0 of pipeline 'p', message " in text


def test_state_computation_returning_a_non_tuple_raises() -> None:
    with pytest.raises(UserCodeError, match=r"step 'no tuple': a state computation must return "
                       r"\(output, save_state\), got str from .*no_tuple"):
        run_app(_linear(("to_stateful", no_tuple, Tally, "tally")), inputs={0: ["x"]})


def test_user_exception_names_step_function_and_input() -> None:
    with pytest.raises(UserCodeError) as info:
        run_app(_linear(("to", boom)), inputs={0: ["ok"]})
    text = str(info.value)
    assert "pipeline 'p', step 'boom': boom" in text
    assert "raised ValueError(\"cannot handle 'ok'\")" in text
    assert "input item 0 of pipeline 'p'" in text
    assert "ValueError" in info.value.traceback_text


@pytest.mark.parametrize("save", [True, False])
def test_save_state_persists_only_when_true(tmp_path: Any, save: bool) -> None:
    step = count_and_save if save else count_no_save
    url = f"sqlite:///{tmp_path / 'state.db'}"
    result = run(_linear(("to_stateful", step, Tally, "tally")), inputs={0: ["a", "b"]},
                 state_store=url)
    assert result.outputs == {"sink": [b"1\n", b"2\n"]}
    assert result.state("tally").n == 2
    store = open_store(url, namespace="test-app")
    try:
        snap = store.load("tally", "_")
    finally:
        store.close()
    if not save:
        assert snap is None
        return
    assert snap is not None
    state = load_obj(snap.data)
    assert state.n == 2
    assert len(snap.applied_ids) == 2 and len(set(snap.applied_ids)) == 2


def load_obj(data: bytes) -> Any:
    from nfbuilder.codec import deserialize

    return deserialize(data)


def test_same_store_second_run_is_a_redelivery(tmp_path: Any) -> None:
    # Ids are deterministic: a second run on the same durable store is recognised as a
    # redelivery: the state is not counted twice and the recorded outputs are re-emitted
    # (documented in the module docstring).
    url = f"sqlite:///{tmp_path / 'state.db'}"
    app = _linear(("to_stateful", count_and_save, Tally, "tally"))
    assert run_app(app, inputs={0: ["a", "b"]}, state_store=url) == {"sink": [b"1\n", b"2\n"]}
    again = run(app, inputs={0: ["a", "b"]}, state_store=url)
    assert again.outputs == {"sink": [b"1\n", b"2\n"]}
    assert again.state("tally").n == 2


def test_undeclared_partition_key_is_dropped_counted_and_logged(caplog: Any) -> None:
    app = _linear(("to_state_partition", count_and_save, Tally, "tally", first_letter, ["a", "b"]))
    with caplog.at_level(logging.WARNING, logger="nfbuilder.core"):
        result = run(app, inputs={0: ["apple", "zebra", "banana", "avocado"]})
    assert result.outputs == {"sink": [b"1\n", b"1\n", b"2\n"]}
    assert result.unknown_keys == {"tally": 1}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("1 message(s) dropped: partition key not among the declared partition_keys "
               "(e.g. 'z'" in w for w in warnings), warnings
    assert result.state("tally", "a").n == 2


def test_drops_for_undeclared_keys_are_logged_once_per_interval_with_a_count(
        caplog: Any) -> None:
    # one bad key per message must not mean one log line per message
    app = _linear(("to_state_partition", count_and_save, Tally, "tally", first_letter, ["a"]))
    with caplog.at_level(logging.WARNING, logger="nfbuilder.core"):
        result = run(app, inputs={0: ["zebra"] * 500 + ["apple"]})
    assert result.outputs == {"sink": [b"1\n"]}
    assert result.unknown_keys == {"tally": 500}
    lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("pipeline 'p', step 'count and save': 1 "), lines


def test_state_lookup_error_lists_known_keys() -> None:
    app = _linear(("to_state_partition", count_and_save, Tally, "tally", first_letter, None))
    result = run(app, inputs={0: ["apple", "kiwi"]})
    with pytest.raises(KeyError, match=r"no state object 'tally' for key 'q': no message reached "
                       r"it. Keys with a state object: \['a', 'k'\]"):
        result.state("tally", "q")
    with pytest.raises(KeyError, match=r"pass key= for a partitioned state"):
        result.state("tally")


# -- routing: broadcast and tag conditions ---------------------------------------------------
def broadcast_app(args: list[str]) -> list[tuple]:
    ab = wallaroo.ApplicationBuilder("broadcast")
    ab.new_pipeline("p", wallaroo.TCPSourceConfig("127.0.0.1", "7010", text_or_none))
    ab.to(drop_odd)
    ab.to_sinks([wallaroo.TCPSinkConfig("127.0.0.1", "7002", text_line),
                 wallaroo.TCPSinkConfig("127.0.0.1", "7003", text_star)])
    return ab.build()


def test_to_sinks_broadcasts_to_both_sinks() -> None:
    outs = run_app(broadcast_app, inputs={0: ["ab", "abc", "cd"]})
    assert outs == {"sink": [b"ab\n", b"cd\n"], "sink-2": [b"*ab\n", b"*cd\n"]}


def two_pipelines(args: list[str]) -> list[tuple]:
    """Two pipelines share a state vertex; each has its own sink, so its out-edges carry tags."""
    ab = wallaroo.ApplicationBuilder("shared")
    ab.new_pipeline("left", wallaroo.TCPSourceConfig("127.0.0.1", "7010", text_or_none))
    ab.to_stateful(count_and_save, Tally, "tally")
    ab.to_sink(wallaroo.TCPSinkConfig("127.0.0.1", "7002", text_line))
    ab.new_pipeline("right", wallaroo.TCPSourceConfig("127.0.0.1", "7011", text_or_none))
    ab.to_stateful(count_and_save, Tally, "tally")
    ab.to_sink(wallaroo.TCPSinkConfig("127.0.0.1", "7003", text_star))
    return ab.build()


def test_tag_conditions_route_each_pipeline_to_its_own_sink() -> None:
    result = run(two_pipelines, inputs={"right": ["x"], "left": ["y", "z"]})
    # fed in the order of the inputs keys: right first, then left; one shared state
    assert result.outputs == {"left-sink": [b"2\n", b"3\n"], "right-sink": [b"*1\n"]}
    assert result.state("tally").n == 3


# -- the harness's own errors --------------------------------------------------------------
def test_unknown_pipeline_key() -> None:
    with pytest.raises(KeyError, match=r"inputs key 'middle' names no pipeline of 'shared'; use "
                       r"a pipeline name or index: 0 = 'left', 1 = 'right'"):
        run_app(two_pipelines, inputs={"middle": []})
    with pytest.raises(KeyError, match=r"inputs key 2 names no pipeline"):
        run_app(two_pipelines, inputs={2: []})


def test_pipeline_given_twice() -> None:
    with pytest.raises(ValueError, match=r"inputs give pipeline 'left' twice \(as 0 and 'left'\); "
                       r"put all its items in one list"):
        run_app(two_pipelines, inputs={0: [], "left": []})


def test_items_must_be_a_list() -> None:
    with pytest.raises(TypeError, match=r"inputs\[0\] must be a list of items, got bytes; wrap a "
                       r"single item in a list"):
        run_app(_linear(), inputs={0: frame(b"a")})


def test_partial_frame_is_reported() -> None:
    with pytest.raises(UserCodeError, match=r"pipeline 'p' decoder: input item 1 is not framed as "
                       r"the decoder expects: stream ended inside a frame: 1 of 5 payload bytes"):
        run_app(_linear(), inputs={0: [frame(b"ok"), frame(b"hello")[:5]]})


def test_bad_app_arguments() -> None:
    with pytest.raises(AppLoadError, match=r"module 'struct' defines no application_setup"):
        run_app(sys.modules["struct"])
    with pytest.raises(TypeError, match=r"app must be a module path, a module or an "
                       r"application_setup function, got int 3"):
        run_app(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"args must be a list of strings, got str"):
        run_app(_linear(), "--in h:1")
    with pytest.raises(AppLoadError, match=r"returned dict, not the list from ab.build\(\)"):
        run_app(lambda args: {})


def test_build_errors_propagate_unchanged() -> None:
    def setup(args: list[str]) -> list[tuple]:
        ab = wallaroo.ApplicationBuilder("no pipeline")
        ab.to(drop_odd)
        return ab.build()

    with pytest.raises(wallaroo.WallarooParameterError):
        run_app(setup)


# -- passing objects vs serializing between vertices ----------------------------------------
class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("cannot pickle 'Unpicklable' object")

    def __str__(self) -> str:
        return "U"


@wallaroo.computation(name="make unpicklable")
def make_unpicklable(data: Any) -> Any:
    return Unpicklable()


@wallaroo.computation(name="pass on")
def pass_on(data: Any) -> Any:
    return data


def test_serialize_catches_outputs_a_deployment_could_not_send() -> None:
    app = _linear(("to", make_unpicklable), ("to", pass_on))
    assert run_app(app, inputs={0: ["x"]}) == {"sink": [b"U\n"]}  # objects: not noticed
    with pytest.raises(UserCodeError, match="step 'make unpicklable': an output of type "
                       "Unpicklable cannot be pickled"):
        run_app(app, inputs={0: ["x"]}, serialize=True)


def test_the_last_steps_output_is_encoded_before_it_crosses_a_hop() -> None:
    # as in Wallaroo, the sink's encoder runs with the last step: its output is never pickled
    app = _linear(("to", make_unpicklable))
    assert run_app(app, inputs={0: ["x"]}, serialize=True) == {"sink": [b"U\n"]}


class Log:
    def __init__(self) -> None:
        self.seen: list[str] = []


@wallaroo.state_computation(name="log and share")
def log_and_share(data: str, state: Log) -> tuple[list[str], bool]:
    state.seen.append(data)
    return (state.seen, False)  # the state's own list, not a copy


@wallaroo.computation(name="mark")
def mark(data: list[str]) -> str:
    data.append("!")  # changes what it was given
    return ",".join(data)


def test_objects_are_shared_between_vertices_serialized_ones_are_not() -> None:
    # The documented trade-off of the default: a step that changes an object it received
    # changes the sender's object too (here a state), which a deployment never does.
    app = _linear(("to_stateful", log_and_share, Log, "log"), ("to", mark))
    faithful = run(app, inputs={0: ["a", "b"]}, serialize=True)
    assert faithful.outputs == {"sink": [b"a,!\n", b"a,b,!\n"]}
    assert faithful.state("log").seen == ["a", "b"]
    shared = run(app, inputs={0: ["a", "b"]})
    assert shared.outputs == {"sink": [b"a,!\n", b"a,!,b,!\n"]}
    assert shared.state("log").seen == ["a", "!", "b", "!"]


calls: list[str] = []


@wallaroo.partition
def counted_first_letter(data: str) -> str:
    calls.append(data)
    return data[0]


@pytest.mark.parametrize("serialize", [False, True])
def test_partition_function_runs_once_per_message(serialize: bool) -> None:
    # The upstream vertex keys each message for the state vertex; the state vertex uses that
    # key instead of computing it a second time.
    calls.clear()
    app = _linear(("to", drop_odd),
                  ("to_state_partition", count_and_save, Tally, "tally", counted_first_letter,
                   None))
    result = run(app, inputs={0: ["ab", "ac", "bc"]}, serialize=serialize)
    assert result.outputs == {"sink": [b"1\n", b"2\n", b"1\n"]}
    assert calls == ["ab", "ac", "bc"]
    assert result.state("tally", "a").n == 2


@pytest.mark.parametrize("first", [False, True])
def test_a_store_replays_the_same_in_both_modes(tmp_path: Any, first: bool) -> None:
    # outputs are recorded in their serialized form whatever the mode, so a second run in the
    # other mode still recognises the redelivery and re-emits the same outputs.
    url = f"sqlite:///{tmp_path / 'state.db'}"
    app = _linear(("to_stateful", count_and_save, Tally, "tally"))
    assert run_app(app, inputs={0: ["a", "b"]}, state_store=url, serialize=first) == {
        "sink": [b"1\n", b"2\n"]}
    again = run(app, inputs={0: ["a", "b", "c"]}, state_store=url, serialize=not first)
    assert again.outputs == {"sink": [b"1\n", b"2\n", b"3\n"]}
    assert again.state("tally").n == 3
