"""build()'s validation: one test per message, asserting its text and where it points."""

from __future__ import annotations

import re

import pytest
import wallaroo_objects as w

from nfbuilder import ApplicationBuilder, UserSourceConfig, WallarooParameterError


def pipeline(name: str = "p", port: str = "7010") -> ApplicationBuilder:
    """A builder with one open pipeline."""
    return ApplicationBuilder("app").new_pipeline(name, w.tcp_source(port))


def error_of(ab: ApplicationBuilder) -> str:
    with pytest.raises(WallarooParameterError) as err:
        ab.build()
    return str(err.value)


# ------------------------------------------------------------ structure (Wallaroo 0.5 wording)


def test_step_before_new_pipeline() -> None:
    ab = ApplicationBuilder("app").to(w.double).to_sink(w.tcp_sink())
    assert error_of(ab) == "Please declare a new pipeline before adding computation steps."


def test_step_after_done_needs_a_new_pipeline() -> None:
    ab = pipeline().to(w.double).to_sink(w.tcp_sink()).done().to(w.add_one)
    assert error_of(ab) == "Please declare a new pipeline before adding computation steps."


@pytest.mark.parametrize("close", ["to_sink", "to_sinks"])
def test_step_after_a_sink(close: str) -> None:
    ab = pipeline()
    if close == "to_sink":
        ab.to_sink(w.tcp_sink())
    else:
        ab.to_sinks([w.tcp_sink()])  # unlike 0.5, to_sinks closes the pipeline too
    ab.to(w.double)
    assert error_of(ab) == (
        "Unable to add a computation step after a sink. Please declare a new pipeline first."
    )


def test_duplicate_pipeline_name_is_a_wallaroo_parameter_error() -> None:
    ab = pipeline("orders").to_sink(w.tcp_sink()).new_pipeline("orders", w.tcp_source("7011"))
    ab.to_sink(w.tcp_sink("7003"))
    # 0.5 raised AttributeError here (a bug); this must be the real error.
    assert error_of(ab) == (
        "A pipeline with the name 'orders' has already been defined. "
        "Pipeline names must be unique: rename one of them."
    )


def test_app_ending_in_to_sinks_is_valid() -> None:
    # 0.5 wrongly required a to_sink somewhere.
    actions = pipeline().to(w.double).to_sinks([w.tcp_sink("7002"), w.tcp_sink("7003")]).build()
    assert actions[-1][0] == "to_sinks"


def test_no_sink_anywhere() -> None:
    ab = pipeline().to(w.double).done()
    assert error_of(ab) == "At least one pipeline must define a sink"


def test_done_right_after_to_sink_is_a_no_op() -> None:
    actions = pipeline().to(w.double).to_sink(w.tcp_sink()).done().build()
    assert actions[-2:] == [("to_sink", w.tcp_sink().to_tuple()), ("done",)]


def test_done_before_any_pipeline() -> None:
    ab = ApplicationBuilder("app").done()
    assert error_of(ab) == (
        "done() was called before any pipeline was declared. "
        "Call new_pipeline(name, source_config) first."
    )


def test_done_on_an_empty_pipeline() -> None:
    assert error_of(pipeline("lonely").done()) == (
        "Pipeline 'lonely' has no steps and no sink; add steps or a sink before done()."
    )


def test_no_pipeline_at_all() -> None:
    assert error_of(ApplicationBuilder("app")) == (
        "The application declares no pipeline. Add ab.new_pipeline(name, source_config)."
    )


def test_empty_pipeline_name() -> None:
    ab = ApplicationBuilder("app").new_pipeline("", w.tcp_source()).to_sink(w.tcp_sink())
    assert error_of(ab) == "new_pipeline needs a non-empty string name, got ''."


def test_to_sinks_needs_a_non_empty_list() -> None:
    assert error_of(pipeline("p").to_sinks([])) == (
        "Pipeline 'p': to_sinks needs a non-empty list of sink configs, got []."
    )


# ------------------------------------------------------------ steps


def test_computation_not_decorated() -> None:
    def plain(data: int) -> int:
        return data

    msg = error_of(pipeline("p").to(plain).to_sink(w.tcp_sink()))
    assert msg.startswith("Pipeline 'p', step 1 (to): expected a computation object, got <function")
    assert "plain" in msg
    assert msg.endswith(
        "Decorate the function with @wallaroo.computation(name=...) (or the _multi variant)."
    )


def test_state_step_not_decorated_suggests_state_computation() -> None:
    msg = error_of(pipeline("p").to_stateful(lambda d, s: d, w.Counter, "s").to_sink(w.tcp_sink()))
    assert msg.startswith("Pipeline 'p', step 1 (to_stateful): expected a computation object")
    assert "@wallaroo.state_computation(name=...)" in msg


def test_stateful_computation_given_to_to() -> None:
    msg = error_of(pipeline("p").to(w.double).to(w.count).to_sink(w.tcp_sink()))
    assert msg == (
        "Pipeline 'p', step 2 (to 'count'): to got the state computation "
        "<StateComputation count>, which needs a state. "
        "Use to_stateful(...) or to_state_partition(...) for it."
    )


def test_stateful_computation_given_to_to_parallel() -> None:
    msg = error_of(pipeline("p").to_parallel(w.count_multi).to_sink(w.tcp_sink()))
    assert msg.startswith("Pipeline 'p', step 1 (to_parallel 'count multi'): to_parallel got "
                          "the state computation <StateComputationMulti count_multi>")


def test_stateless_computation_given_to_to_stateful() -> None:
    msg = error_of(pipeline("p").to_stateful(w.double, w.Counter, "s").to_sink(w.tcp_sink()))
    assert msg == (
        "Pipeline 'p', step 1 (to_stateful 'double'): to_stateful needs a state computation "
        "taking (data, state), got the stateless <Computation double>. "
        "Use @wallaroo.state_computation(name=...), or add it with to()."
    )


def test_stateless_computation_given_to_to_state_partition() -> None:
    ab = pipeline("p").to_state_partition(w.split, w.Counter, "s", w.by_parity, [0, 1])
    msg = error_of(ab.to_sink(w.tcp_sink()))
    assert msg.startswith("Pipeline 'p', step 1 (to_state_partition 'split'): to_state_partition "
                          "needs a state computation")


def test_state_class_needing_arguments() -> None:
    msg = error_of(pipeline("p").to_stateful(w.count, w.NeedsArgs, "s").to_sink(w.tcp_sink()))
    assert msg == (
        "Pipeline 'p', step 1 (to_stateful 'count'): the state class NeedsArgs cannot be built "
        "with no arguments (nfbuilder calls State() for each new key). "
        "Give its __init__ parameters defaults."
    )


def test_state_class_not_callable() -> None:
    msg = error_of(pipeline("p").to_stateful(w.count, 3, "s").to_sink(w.tcp_sink()))
    assert msg == (
        "Pipeline 'p', step 1 (to_stateful 'count'): the state class must be a class (called "
        "with no arguments to make a fresh state), got 3."
    )


def test_empty_state_name() -> None:
    msg = error_of(pipeline("p").to_stateful(w.count, w.Counter, "").to_sink(w.tcp_sink()))
    assert msg == (
        "Pipeline 'p', step 1 (to_stateful 'count'): the state name must be a non-empty string, "
        "got ''."
    )


def test_the_same_computation_twice_in_a_pipeline_is_fine() -> None:
    # Wallaroo accepts it (e.g. a detector applied at several depths); vertex names get suffixes
    ab = pipeline("p").to(w.double).to(w.add_one).to(w.double).to_sink(w.tcp_sink())
    assert [a[0] for a in ab.build()[2:5]] == ["to", "to", "to"]


def test_same_step_name_in_two_pipelines_is_fine() -> None:
    ab = pipeline("a").to(w.double).to_sink(w.tcp_sink())
    ab.new_pipeline("b", w.tcp_source("7011")).to(w.double).to_sink(w.tcp_sink("7003"))
    assert len(ab.build()) == 7


def test_same_state_twice_in_one_pipeline() -> None:
    ab = pipeline("p").to_stateful(w.count, w.Counter, "s").to_stateful(
        w.count_again, w.Counter, "s"
    )
    assert error_of(ab.to_sink(w.tcp_sink())) == (
        "Pipeline 'p', step 2 (to_stateful 'count again'): the state 's' is already used by an "
        "earlier step of this pipeline; a pipeline may visit a state once. "
        "Merge the two steps into one."
    )


# ------------------------------------------------------------ shared state (0.5 wording)


def two_pipelines(first: tuple, second: tuple) -> ApplicationBuilder:  # type: ignore[type-arg]
    """Pipeline 'a' runs ``first`` then a sink, pipeline 'b' runs ``second`` then done()."""
    ab = pipeline("a")
    getattr(ab, first[0])(*first[1:]).to_sink(w.tcp_sink())
    ab.new_pipeline("b", w.tcp_source("7011"))
    getattr(ab, second[0])(*second[1:]).done()
    return ab


def test_shared_state_with_a_different_class() -> None:
    ab = two_pipelines(("to_stateful", w.count, w.Counter, "s"),
                       ("to_stateful", w.count_again, w.OtherCounter, "s"))
    assert error_of(ab) == (
        "A state with the name 's' has already been defined with an different type Counter, "
        "instead of OtherCounter. (Pipeline 'b', step 1 (to_stateful 'count again'): steps that "
        "share a state name must use the same state class.)"
    )


def test_shared_state_with_different_keys() -> None:
    ab = two_pipelines(
        ("to_state_partition", w.count, w.Counter, "s", w.by_parity, [0, 1]),
        ("to_state_partition", w.count_again, w.Counter, "s", w.by_parity, [0, 1, 2]),
    )
    assert error_of(ab) == (
        "A state with the name 's' has already been defined with a different paritioning "
        "scheme [0, 1], instead of [0, 1, 2]. (Pipeline 'b', step 1 (to_state_partition "
        "'count again'): steps that share a state name must use the same partition keys.)"
    )


def test_shared_state_unpartitioned_then_partitioned() -> None:
    ab = two_pipelines(
        ("to_stateful", w.count, w.Counter, "s"),
        ("to_state_partition", w.count_again, w.Counter, "s", w.by_parity, [0, 1]),
    )
    assert "different paritioning scheme None, instead of [0, 1]" in error_of(ab)


def test_shared_state_with_same_class_and_keys_is_valid() -> None:
    ab = two_pipelines(
        ("to_state_partition_u64", w.count, w.Counter, "s", w.by_parity, [0, 1]),
        ("to_state_partition_u64", w.count_again, w.Counter, "s", w.by_parity, [0, 1]),
    )
    assert [a[0] for a in ab.build()][-1] == "done"


# ------------------------------------------------------------ partitions


def partitioned(keys: object, kind: str = "to_state_partition", fn: object = w.by_parity) -> str:
    ab = pipeline("p")
    getattr(ab, kind)(w.count, w.Counter, "s", fn, keys).to_sink(w.tcp_sink())
    return error_of(ab)


@pytest.mark.parametrize("keys, type_name", [((0, 1), "tuple"), ({0, 1}, "set"), ("ab", "str")])
def test_partition_keys_not_a_list(keys: object, type_name: str) -> None:
    assert partitioned(keys) == (
        f"Partitions lists should be of type list. Got a {type_name} instead. "
        "(Pipeline 'p', step 1 (to_state_partition 'count'))"
    )


@pytest.mark.parametrize(
    "keys", [[0, 0], ["a", "b", "a"], [[0], [1]]], ids=["int", "str", "unhashable"]
)
def test_partition_keys_duplicate_or_unhashable(keys: list) -> None:  # type: ignore[type-arg]
    assert partitioned(keys) == (
        "Partition labels should be uniquely identified via equality and support hashing. "
        "You might have duplicates or objects which can't be hashed in your list. "
        "(Pipeline 'p', step 1 (to_state_partition 'count'))"
    )


@pytest.mark.parametrize("bad", [-1, "a", 1.0, True])
def test_u64_partition_keys_must_be_non_negative_ints(bad: object) -> None:
    assert partitioned([0, bad], "to_state_partition_u64") == (
        f"{bad!r} is an invalid partition label. to_state_partition_u64 requires non-negative "
        "integers as partition labels. (Pipeline 'p', step 1 (to_state_partition_u64 'count'))"
    )


def test_u64_partition_keys_accept_large_ints() -> None:
    ab = pipeline("p").to_state_partition_u64(w.count, w.Counter, "s", w.by_parity, [0, 2**63])
    assert ab.to_sink(w.tcp_sink()).build()[2][5] == [0, 2**63]


def test_partition_function_without_partition_method() -> None:
    def by_letter(data: str) -> str:
        return data[0]

    msg = partitioned(["a"], fn=by_letter)
    assert msg.startswith(
        "Partition function is missing partition method. "
        "Did you forget to use the @wallaroo.partition_function decorator? "
        "(Pipeline 'p', step 1 (to_state_partition 'count'): got <function"
    )
    assert re.search(r"by_letter at 0x[0-9a-f]+>; decorate it with @wallaroo\.partition\.\)$", msg)


# ------------------------------------------------------------ sources and sinks


def test_source_that_is_not_a_config() -> None:
    ab = ApplicationBuilder("app").new_pipeline("p", "tcp://x").to_sink(w.tcp_sink())
    assert error_of(ab) == (
        "Pipeline 'p': the source must be a TCPSourceConfig, KafkaSourceConfig, a Kafka source CLI "
        "parser, a GenSourceConfig or a UserSourceConfig, got 'tcp://x'."
    )


def test_user_source_without_read_or_with_a_bad_decoder() -> None:
    ab = ApplicationBuilder("app").new_pipeline("p", UserSourceConfig(object()))
    assert "the UserSourceConfig's source <object object at" in error_of(ab.to_sink(w.tcp_sink()))
    assert "has no read method; give an object with read(n, timeout_s) and ack(offsets)" in \
        error_of(ApplicationBuilder("app").new_pipeline("p", UserSourceConfig(object()))
                 .to_sink(w.tcp_sink()))

    class Reads:
        def read(self, n: int, timeout_s: float) -> list:
            return []

        def ack(self, offsets: list) -> None:
            pass

    ab = ApplicationBuilder("app").new_pipeline("p", UserSourceConfig(Reads(), "not one"))
    assert error_of(ab.to_sink(w.tcp_sink())) == (
        "Pipeline 'p': the UserSourceConfig's decoder 'not one' has no decode method. Decorate "
        "the function with @wallaroo.decoder(), or leave the decoder out for a source whose "
        "records are the messages themselves.")


def test_sink_that_is_not_a_config() -> None:
    assert error_of(pipeline("p").to_sink(("udp", "h", "1"))) == (
        "Pipeline 'p': a sink must be a TCPSinkConfig, KafkaSinkConfig or a Kafka sink CLI parser, "
        "got ('udp', 'h', '1')."
    )


def test_source_decoder_not_decorated() -> None:
    ab = ApplicationBuilder("app").new_pipeline("p", w.tcp_source(decoder=bytes.decode))
    msg = error_of(ab.to_sink(w.tcp_sink()))
    assert msg.startswith("Pipeline 'p': the source's decoder <method 'decode' of 'bytes'")
    assert msg.endswith("has no decode method. Decorate the function with "
                        "@wallaroo.decoder(header_length=4, length_fmt='>I').")


def test_sink_encoder_not_decorated() -> None:
    msg = error_of(pipeline("p").to_sink(w.tcp_sink(encoder=str.encode)))
    assert msg.startswith("Pipeline 'p': the sink's encoder <method 'encode' of 'str'")
    assert msg.endswith("has no encode method. Decorate the function with @wallaroo.encoder.")


@pytest.mark.parametrize(
    "where, port, shown",
    [("source", "http", "'http'"), ("sink", "70000", "'70000'"), ("source", None, "None")],
)
def test_bad_port(where: str, port: object, shown: str) -> None:
    if where == "source":
        ab = ApplicationBuilder("app").new_pipeline("p", w.tcp_source(port)).to_sink(w.tcp_sink())  # type: ignore[arg-type]
    else:
        ab = pipeline("p").to_sink(w.tcp_sink(port))  # type: ignore[arg-type]
    assert error_of(ab) == (
        f"Pipeline 'p' {where}: port {shown} is not a port number; give a string like '7010'."
    )


def test_kafka_source_and_sink_are_valid() -> None:
    actions = (
        ApplicationBuilder("k").new_pipeline("p", w.kafka_source()).to(w.double)
        .to_sink(w.kafka_sink()).build()
    )
    assert actions[1][2][0] == "kafka" and actions[3][1][0] == "kafka"
