"""The Wallaroo API surface: decorators, pickling, build()'s action list, CLI-arg helpers."""

from __future__ import annotations

import pickle
import struct

import cloudpickle
import pytest
import wallaroo_objects as w

import nfbuilder
from nfbuilder import (
    ApplicationBuilder,
    StateBuilder,
    TCPSinkConfig,
    TCPSourceConfig,
    WallarooParameterError,
    computation,
    computation_multi,
    decoder,
    encoder,
    kafka_parse_sink_options,
    kafka_parse_source_options,
    partition,
    state_computation,
    state_computation_multi,
    tcp_parse_input_addrs,
    tcp_parse_output_addrs,
)
from nfbuilder.dsl.args import _kafka_parse_broker

# ---------------------------------------------------------------- decorators


def test_computation_has_wallaroo_methods_and_calls_the_function() -> None:
    assert w.double.name() == "double"
    assert w.double.compute(21) == 42
    assert w.double(5) == 10  # still callable for unit tests
    assert not hasattr(w.double, "compute_multi")
    assert isinstance(w.double, nfbuilder.Computation)


def test_computation_multi_methods() -> None:
    assert w.split.name() == "split"
    assert w.split.compute_multi("a b c") == ["a", "b", "c"]
    assert not hasattr(w.split, "compute")  # machida tells multi from single by compute_multi
    assert isinstance(w.split, nfbuilder.ComputationMulti)


def test_state_computation_methods() -> None:
    state = w.Counter()
    assert w.count.name() == "count"
    assert w.count.compute("x", state) == (1, True)
    assert w.count("x", state) == (2, True)
    assert state.n == 2
    assert isinstance(w.count, nfbuilder.StateComputation)


def test_state_computation_multi_methods() -> None:
    state = w.Counter()
    assert w.count_multi.name() == "count multi"
    assert w.count_multi.compute_multi("x", state) == ([1, 1], True)
    assert isinstance(w.count_multi, nfbuilder.StateComputationMulti)


def test_partition_decoder_encoder_methods() -> None:
    assert w.by_parity.partition(7) == 1
    assert w.decode.header_length() == 4
    assert w.decode.payload_length(struct.pack(">I", 300)) == 300
    assert w.decode.decode(b"hi") == "hi"
    assert w.decode_short.header_length() == 2
    assert w.decode_short.payload_length(b"\x01\x02") == 258
    assert w.encode.encode(12) == b"12"


def test_decorated_object_keeps_the_function_identity() -> None:
    assert getattr(w.double, "__name__", None) == "double"
    assert w.double.__module__ == "wallaroo_objects"
    assert w.double.function(3) == 6


@pytest.mark.parametrize(
    "obj",
    [w.double, w.split, w.count, w.count_multi, w.by_parity, w.decode, w.encode],
    ids=lambda o: o.__name__,
)
@pytest.mark.parametrize("lib", [pickle, cloudpickle], ids=["pickle", "cloudpickle"])
def test_pickle_round_trip_gives_the_same_object(obj: object, lib: object) -> None:
    assert lib.loads(lib.dumps(obj)) is obj  # type: ignore[attr-defined]


def test_pickle_round_trip_inside_a_structure() -> None:
    actions = [("to", w.double), ("to_sink", ("tcp", "h", "1", w.encode))]
    assert pickle.loads(pickle.dumps(actions)) == actions


ARITY_1 = "Incompatible function arity, your function must allow 1 arguments."
ARITY_2 = "Incompatible function arity, your function must allow 2 arguments."


@pytest.mark.parametrize(
    "make, func, message",
    [
        (computation(name="c"), lambda a, b: a, ARITY_1),
        (computation(name="c"), lambda: 0, ARITY_1),
        (computation_multi(name="c"), lambda a, b, c: a, ARITY_1),
        (state_computation(name="s"), lambda a: a, ARITY_2),
        (state_computation_multi(name="s"), lambda a, b, c: a, ARITY_2),
        (partition, lambda: 0, ARITY_1),
        (encoder, lambda a, b: a, ARITY_1),
        (decoder(4, ">I"), lambda: 0, ARITY_1),
    ],
)
def test_arity_errors_use_wallaroo_05_wording(make, func, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(WallarooParameterError) as err:
        make(func)
    assert str(err.value).startswith(message)
    assert "<lambda>" in str(err.value)  # names the user function


def test_arity_accepts_defaults_and_varargs() -> None:
    assert computation(name="d")(lambda a, b=1: a + b).compute(1) == 2
    assert computation(name="v")(lambda *args: args).compute(1) == (1,)
    assert state_computation(name="s")(lambda a, s, extra=None: (a, False)).compute(1, None) == (
        1,
        False,
    )


@pytest.mark.parametrize("bad, type_name", [(42, "int"), ("f", "str"), (None, "NoneType")])
def test_not_callable_is_rejected(bad: object, type_name: str) -> None:
    with pytest.raises(WallarooParameterError) as err:
        computation(name="c")(bad)  # type: ignore[arg-type]
    assert str(err.value).startswith(f"Expected a callable object but got a {type_name}")


def test_computation_name_must_be_a_non_empty_string() -> None:
    with pytest.raises(WallarooParameterError, match="needs a non-empty string name, got ''"):
        computation(name="")(lambda a: a)


def test_decoder_header_length_must_match_length_fmt() -> None:
    with pytest.raises(WallarooParameterError) as err:
        decoder(header_length=4, length_fmt=">H")(lambda bs: bs)
    assert "length_fmt '>H' reads 2 bytes but header_length is 4; make them agree." in str(
        err.value
    )


@pytest.mark.parametrize(
    "header_length, length_fmt, text",
    [
        (0, ">I", "header_length must be an int from 1 to 8, got 0."),
        (9, ">I", "header_length must be an int from 1 to 8, got 9."),
        ("4", ">I", "header_length must be an int from 1 to 8, got '4'."),
        (4, "nonsense", "length_fmt 'nonsense' is not a struct format"),
    ],
)
def test_decoder_bad_framing_parameters(header_length: object, length_fmt: str, text: str) -> None:
    with pytest.raises(WallarooParameterError) as err:
        decoder(header_length=header_length, length_fmt=length_fmt)(lambda bs: bs)  # type: ignore[arg-type]
    assert text in str(err.value)


# ---------------------------------------------------------------- build()


def test_build_returns_wallaroo_action_list_exactly() -> None:
    ab = ApplicationBuilder("App")
    src = TCPSourceConfig("127.0.0.1", "7010", w.decode)
    ab.new_pipeline("p1", src)
    ab.to(w.double)
    ab.to_parallel(w.add_one)
    ab.to_stateful(w.count, w.Counter, "counter")
    ab.to_state_partition(w.count_again, w.OtherCounter, "parts", w.by_parity, [0, 1])
    ab.to_sink(TCPSinkConfig("127.0.0.1", "7002", w.encode))
    actions = ab.build()

    assert [a[0] for a in actions] == [
        "name", "new_pipeline", "to", "to_parallel", "to_stateful", "to_state_partition", "to_sink"
    ]  # fmt: skip
    assert actions[0] == ("name", "App")
    assert actions[1] == ("new_pipeline", "p1", ("tcp", "127.0.0.1", "7010", w.decode))
    assert actions[2] == ("to", w.double)
    assert actions[3] == ("to_parallel", w.add_one)
    kind, comp, builder, name = actions[4]
    assert (kind, comp, name) == ("to_stateful", w.count, "counter")
    assert isinstance(builder, StateBuilder)
    assert (builder.name, builder.state_cls) == ("counter", w.Counter)
    assert isinstance(builder.____wallaroo_build____(), w.Counter)
    kind, comp, builder, name, fn, keys = actions[5]
    assert (kind, comp, name, fn, keys) == ("to_state_partition", w.count_again, "parts",
                                            w.by_parity, [0, 1])
    assert (builder.name, builder.state_cls) == ("parts", w.OtherCounter)
    assert actions[6] == ("to_sink", ("tcp", "127.0.0.1", "7002", w.encode))
    assert all(type(a) is tuple for a in actions)


def test_build_to_sinks_kafka_tuples_and_u64() -> None:
    actions = (
        ApplicationBuilder("K")
        .new_pipeline("p", w.kafka_source("in"))
        .to_state_partition_u64(w.count, w.Counter, "s", w.by_parity, [0, 1])
        .to_sinks([w.tcp_sink("7002"), w.kafka_sink("out")])
        .build()
    )
    assert actions[1] == ("new_pipeline", "p", ("kafka", "in", [("k1", "9092")], "Warn", w.decode))
    assert actions[2][0] == "to_state_partition_u64"
    assert actions[2][4:] == (w.by_parity, [0, 1])
    assert actions[3] == (
        "to_sinks",
        [
            ("tcp", "127.0.0.1", "7002", w.encode),
            ("kafka", "out", [("k1", "9092")], "Warn", 10, 100000, w.kafka_encode),
        ],
    )


def test_partition_keys_default_to_on_demand_empty_list() -> None:
    actions = (
        ApplicationBuilder("A")
        .new_pipeline("p", w.tcp_source())
        .to_state_partition(w.count, w.Counter, "s", w.by_parity)
        .to_sink(w.tcp_sink())
        .build()
    )
    assert actions[2][5] == []


def test_chaining_returns_the_builder_and_done_appends_done() -> None:
    ab = ApplicationBuilder("Chain")
    assert ab.new_pipeline("a", w.tcp_source()) is ab
    assert ab.to(w.double) is ab
    assert ab.to_sink(w.tcp_sink()) is ab
    assert ab.new_pipeline("b", w.tcp_source("7011")) is ab
    assert ab.to_stateful(w.count, w.Counter, "s") is ab
    assert ab.done() is ab
    actions = ab.build()
    assert actions[-1] == ("done",)
    assert ab.build() is actions  # Wallaroo returns the list itself, not a copy


def test_import_wallaroo_compat() -> None:
    import wallaroo

    api = vars(wallaroo)
    assert api["ApplicationBuilder"] is ApplicationBuilder
    assert api["computation"] is computation
    assert api["WallarooParameterError"] is WallarooParameterError
    assert set(nfbuilder.__all__) <= set(dir(wallaroo))
    for name in ("serialize", "deserialize", "tcp_parse_input_addrs", "kafka_parse_sink_options",
                 "TCPSourceConfig", "KafkaSinkConfig", "partition", "decoder", "encoder"):
        assert hasattr(wallaroo, name), name
    assert wallaroo.deserialize(wallaroo.serialize({"a": 1})) == {"a": 1}


# ---------------------------------------------------------------- CLI-arg helpers


def test_tcp_parse_addrs_strings_and_unknown_args_ignored() -> None:
    args = ["prog", "--in", "127.0.0.1:7010,h2:7011", "--out", "o:7002", "--other", "x"]
    assert tcp_parse_input_addrs(args) == [("127.0.0.1", "7010"), ("h2", "7011")]
    assert tcp_parse_output_addrs(args) == [("o", "7002")]
    assert tcp_parse_input_addrs(["prog", "-i", "a:1"]) == [("a", "1")]
    assert tcp_parse_output_addrs(["prog", "-o", "b:2"]) == [("b", "2")]


@pytest.mark.parametrize("fn, flag", [(tcp_parse_input_addrs, "--in"),
                                      (tcp_parse_output_addrs, "--out")])
def test_missing_addrs_is_a_wallaroo_parameter_error(fn, flag) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(WallarooParameterError) as err:
        fn(["prog"])
    assert str(err.value).startswith(f"Missing {flag}: give the addresses as {flag} host:port")


def test_addr_without_port_is_rejected() -> None:
    with pytest.raises(WallarooParameterError) as err:
        tcp_parse_input_addrs(["prog", "--in", "localhost"])
    assert str(err.value) == (
        "--in expects host:port[,host:port...], got 'localhost' ('localhost' has no port)."
    )


def test_kafka_parse_broker_default_port_is_string_9092() -> None:
    assert _kafka_parse_broker("k1") == ("k1", "9092")
    assert _kafka_parse_broker("k1:9093") == ("k1", "9093")
    assert _kafka_parse_broker("") == ("", "9092")


def test_kafka_parse_source_options_defaults_and_flags() -> None:
    assert kafka_parse_source_options(["prog"]) == ("", [("", "9092")], "Warn")
    args = ["prog", "--kafka_source_topic", "t", "--kafka_source_brokers", "a:1,b",
            "--kafka_source_log_level", "Info", "--in", "x:1"]
    assert kafka_parse_source_options(args) == ("t", [("a", "1"), ("b", "9092")], "Info")


def test_kafka_parse_sink_options_defaults_and_flags() -> None:
    assert kafka_parse_sink_options(["prog"]) == ("", [("", "9092")], "Warn", 0, 100000)
    args = ["prog", "--kafka_sink_topic", "out", "--kafka_sink_brokers", "k:9",
            "--kafka_sink_log_level", "Error", "--kafka_sink_max_produce_buffer_ms", "10",
            "--kafka_sink_max_message_size", "2048"]
    topic, brokers, level, buffer_ms, size = kafka_parse_sink_options(args)
    assert (topic, brokers, level, buffer_ms, size) == ("out", [("k", "9")], "Error", 10, 2048)
    assert type(buffer_ms) is int and type(size) is int
