"""The planner against every row of design.md's compile mapping, names, fusion, determinism."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import wallaroo_objects as w

import nfbuilder
import nfbuilder as wallaroo
from nfbuilder import ApplicationBuilder
from nfbuilder.loader import load_app
from nfbuilder.plan import (
    BlackholeVertex,
    KafkaSinkVertex,
    KafkaSourceVertex,
    MapVertex,
    PipelineDoc,
    PlanOptions,
    SourceVertex,
    StateVertex,
    TcpSinkVertex,
    TcpSourceVertex,
    UserSourceVertex,
    Vertex,
    VertexGraph,
    plan,
)
from nfbuilder.topology import ErrorPolicy, from_actions

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the example apps live in the repository, not in the package
    sys.path.insert(0, str(ROOT))
from apps import goldens  # noqa: E402 - importable only after ROOT is on sys.path

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


# These tests are about the shape of the topology: they plan with the ``fail`` error policy, so
# no dead-letter sink and edges are added (tests/test_dead_letters.py plans those).
FAIL = ErrorPolicy("fail")


def plan_of(ab: ApplicationBuilder, **options: Any) -> VertexGraph:
    app = attrs.evolve(from_actions(ab.build()), on_error=FAIL)
    return plan(app, PlanOptions(**options))


def plan_app(name: str, **options: Any) -> VertexGraph:
    loaded = load_app(str(goldens.app_path(name)), goldens.ARGS[name])
    return plan(attrs.evolve(loaded.app, on_error=FAIL), PlanOptions(**options))


def only_doc(graph: VertexGraph) -> PipelineDoc:
    assert len(graph.docs) == 1, [d.name for d in graph.docs]
    return graph.docs[0]


def edges(doc: PipelineDoc) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(e.src, e.dst, e.tags) for e in doc.edges]


def shape(v: Vertex) -> tuple[type, str | None]:
    return (type(v), v.container.service if v.container else None)


def steps(v: Vertex) -> tuple[str, ...]:
    return v.works[0].step_names


def one_pipeline() -> ApplicationBuilder:
    return ApplicationBuilder("App").new_pipeline("p", w.tcp_source())


# ------------------------------------------------------------ the mapping table, row by row


def test_tcp_source_is_a_udsource() -> None:
    doc = only_doc(plan_of(one_pipeline().to(w.double).to_sink(w.tcp_sink())))
    src = doc.vertex("source")
    assert shape(src) == (TcpSourceVertex, "source")
    assert src.works[0].decode and src.works[0].steps == ()
    assert isinstance(src, TcpSourceVertex) and (src.host, src.port) == ("127.0.0.1", 7010)
    assert src.max_replicas == 1


def test_kafka_source_is_builtin_kafka_with_a_transformer() -> None:
    ab = ApplicationBuilder("K").new_pipeline("p", w.kafka_source()).to(w.double)
    doc = only_doc(plan_of(ab.to_sink(w.tcp_sink())))
    src = doc.vertex("source")
    assert shape(src) == (KafkaSourceVertex, "sourcetransformer")
    assert src.works[0].decode
    assert isinstance(src, KafkaSourceVertex) and src.consumer_group == f"{doc.name}-source"


def test_to_is_a_serial_map() -> None:
    doc = only_doc(plan_of(one_pipeline().to(w.double).to_sink(w.tcp_sink()), max_replicas=9))
    v = doc.vertex("double")
    assert shape(v) == (MapVertex, "batchmap")  # ordered: numa's batch mode, in order
    # Wallaroo's serial step keeps its order on Numaflow: an ordered vertex, one partition
    assert (v.max_replicas, v.ordered, v.state_name, v.partitions) == (1, True, None, 1)
    # its source writes one message at a time, in order
    src = doc.vertex("source")
    assert isinstance(src, TcpSourceVertex) and src.ordered_writes


def test_unordered_option_autoscales_serial_steps() -> None:
    ab = one_pipeline().to(w.double).to_sink(w.tcp_sink())
    doc = only_doc(plan_of(ab, max_replicas=3, ordered=False))
    v = doc.vertex("double")
    assert (v.ordered, v.max_replicas) == (False, 3)
    assert shape(v) == (MapVertex, "map")  # unary mode, up to 500 in flight
    assert v.container is not None and "--unordered" in v.container.command
    assert not doc.vertex("source").ordered_writes  # type: ignore[attr-defined]
    assert plan_of(ab, ordered=False).digest == plan_of(ab).digest  # a deployment choice
    assert steps(v) == ("double",)


def test_to_parallel_is_autoscaled_up_to_the_option() -> None:
    ab = one_pipeline().to_parallel(w.double).to_sink(w.tcp_sink())
    assert only_doc(plan_of(ab, max_replicas=9)).vertex("double").max_replicas == 9
    assert only_doc(plan_of(ab)).vertex("double").max_replicas == PlanOptions().max_replicas


def test_to_stateful_is_ordered_with_one_partition() -> None:
    ab = one_pipeline().to_stateful(w.count, w.Counter, "Counts").to_sink(w.tcp_sink())
    doc = only_doc(plan_of(ab, partitions=5))
    v = doc.vertex("counts")  # named after the state
    assert shape(v) == (StateVertex, "batchmap")
    assert (v.state_name, v.ordered, v.partitions, v.max_replicas) == ("Counts", True, 1, 1)
    assert doc.vertex("source").works[0].key_by is None  # one state object: no keys needed


@pytest.mark.parametrize("kind", ["to_state_partition", "to_state_partition_u64"])
def test_to_state_partition_is_ordered_with_p_partitions_and_upstream_key_by(kind: str) -> None:
    ab = one_pipeline().to(w.double)
    getattr(ab, kind)(w.count, w.Counter, "parts", w.by_parity, [0, 1]).to_sink(w.tcp_sink())
    doc = only_doc(plan_of(ab, partitions=3))
    v = doc.vertex("parts")
    assert (v.state_name, v.ordered, v.partitions) == ("parts", True, 3)
    # the vertex before the state vertex keys its outputs with the state step's partition function
    key_by = doc.vertex("double").works[0].key_by
    assert key_by is not None and key_by.state is not None
    assert key_by.state.partition_function is w.by_parity
    assert doc.vertex("source").works[0].key_by is None


def test_tcp_sink_is_a_udsink_writing_what_the_last_step_encoded() -> None:
    doc = only_doc(plan_of(one_pipeline().to(w.double).to_sink(w.tcp_sink())))
    v = doc.vertex("sink")
    assert shape(v) == (TcpSinkVertex, "sink")
    assert v.works[0].encoded and not v.works[0].sinks
    # Wallaroo's placement: the encoder runs with the last step
    (sink,) = doc.vertex("double").works[0].sinks
    assert sink.encoder is w.tcp_sink().encoder
    assert edges(doc) == [("source", "double", ()), ("double", "sink", ())]


def test_kafka_sink_is_the_builtin_kafka_sink_fed_by_the_last_step() -> None:
    doc = only_doc(plan_of(one_pipeline().to(w.double).to_sink(w.kafka_sink())))
    out = doc.vertex("sink")
    assert shape(out) == (KafkaSinkVertex, None)  # built-in: no container of ours
    assert isinstance(out, KafkaSinkVertex) and out.set_key and out.topic == "out"
    assert doc.vertex("double").works[0].sinks[0].topic == "out"  # type: ignore[union-attr]
    assert edges(doc)[-1:] == [("double", "sink", ())]
    assert [v.name for v in doc.vertices] == ["source", "double", "sink"]  # no encoder vertex


def test_to_sinks_encodes_once_per_sink_with_a_tag_per_sink() -> None:
    ab = one_pipeline().to(w.double).to_sinks([w.tcp_sink("7002"), w.tcp_sink("7003"),
                                                w.kafka_sink()])
    doc = only_doc(plan_of(ab))
    rest = [v for v in doc.vertices if v.name not in ("source", "double")]
    assert [(v.name, type(v)) for v in rest] == [
        ("sink", TcpSinkVertex), ("sink-2", TcpSinkVertex), ("sink-3", KafkaSinkVertex)]
    assert [(v.host, v.port) for v in rest[:2]] == [("127.0.0.1", 7002), ("127.0.0.1", 7003)]
    assert all(v.works[0].encoded for v in rest)
    work = doc.vertex("double").works[0]
    assert [type(k).__name__ for k in work.sinks] == ["TcpSink", "TcpSink", "KafkaSink"]
    assert work.sink_tags == ("sink", "sink-2", "sink-3")
    # each encoding goes to its own sink only
    assert [(e.dst, e.tags) for e in doc.edges if e.src == "double"] == [
        ("sink", ("sink",)), ("sink-2", ("sink-2",)), ("sink-3", ("sink-3",))]


def test_a_tcp_source_feeding_several_sinks_encodes_and_tags_in_its_transformer() -> None:
    # the TCP source's transformer can tag: the source vertex encodes once per sink
    doc = only_doc(plan_of(one_pipeline().to_sinks([w.tcp_sink("7002"), w.kafka_sink()])))
    assert [(v.name, type(v)) for v in doc.vertices] == [
        ("source", TcpSourceVertex), ("sink", TcpSinkVertex), ("sink-2", KafkaSinkVertex)]
    assert len(doc.vertex("source").works[0].sinks) == 2
    assert [e.tags for e in doc.edges] == [("sink",), ("sink-2",)]


def test_a_generator_source_feeding_several_sinks_encodes_and_tags_in_its_transformer() -> None:
    # like a TCP source: the udsource serves the generated objects, its transformer encodes
    ab = ApplicationBuilder("App").new_pipeline("p", wallaroo.GenSourceConfig(Counting()))
    doc = only_doc(plan_of(ab.to_sinks([w.tcp_sink("7002"), w.kafka_sink()])))
    assert [(v.name, type(v)) for v in doc.vertices] == [
        ("source", UserSourceVertex), ("sink", TcpSinkVertex), ("sink-2", KafkaSinkVertex)]
    source = doc.vertex("source")
    assert source.generated and source.transformer is not None
    assert len(source.works[0].sinks) == 2
    assert [e.tags for e in doc.edges] == [("sink",), ("sink-2",)]


class Counting:
    def initial_value(self) -> int:
        return 1

    def apply(self, previous: int) -> int | None:
        return previous + 1 if previous < 3 else None


def test_done_pipeline_without_sink_gets_a_blackhole_when_needed() -> None:
    ab = one_pipeline().to(w.double).to_sink(w.tcp_sink())
    ab.new_pipeline("q", w.tcp_source("7011")).to(w.add_one).done()
    graph = plan_of(ab)
    assert [d.pipelines for d in graph.docs] == [(0,), (1,)]
    q = graph.docs[1]
    hole = q.vertex("q-end")
    assert shape(hole) == (BlackholeVertex, None)
    assert edges(q) == [("q-source", "add-one", ()), ("add-one", "q-end", ())]
    # the last step's outputs go nowhere: it does not emit them
    assert q.vertex("add-one").works[0].emit is False
    assert not any(isinstance(v, BlackholeVertex) for v in graph.docs[0].vertices)


def test_market_spread_is_one_document_joined_at_the_shared_state() -> None:
    graph = plan_app("market_spread")
    doc = only_doc(graph)
    assert doc.pipelines == (0, 1)
    sources = [v for v in doc.vertices if isinstance(v, SourceVertex)]
    assert [(v.name, type(v)) for v in sources] == [("orders-source", TcpSourceVertex),
                                                    ("market-data-source", TcpSourceVertex)]
    state = doc.vertex("symbol-data")
    assert (state.state_name, state.ordered, state.partitions) == ("symbol-data", True, 2)
    assert state.pipelines == (0, 1)
    assert sorted(edges(doc)) == sorted([
        ("orders-source", "symbol-data", ()),
        ("market-data-source", "symbol-data", ()),
        ("symbol-data", "orders-sink", ("orders",)),
    ])
    # works are tagged per pipeline; only the orders' outputs leave the state vertex
    assert [(wk.pipeline, wk.tag, wk.emit) for wk in state.works] == [
        (0, "orders", True), (1, "market-data", False)]
    # both sources key their messages for the partitioned state
    assert [v.works[0].key_by.name for v in sources] == ["check order",  # type: ignore[union-attr]
                                                         "update market data"]
    # the state vertex has a way out
    assert not any(isinstance(v, BlackholeVertex) for v in doc.vertices)


def test_shared_state_with_sinks_on_both_sides_tags_each_out_edge() -> None:
    ab = ApplicationBuilder("share").new_pipeline("a", w.tcp_source()).to_stateful(
        w.count, w.Counter, "s").to_sink(w.tcp_sink())
    ab.new_pipeline("b", w.tcp_source("7011")).to_stateful(w.count_again, w.Counter, "s").to(
        w.double).to_sink(w.tcp_sink("7003"))
    doc = only_doc(plan_of(ab))
    assert [(e.src, e.dst, e.tags) for e in doc.edges if e.src == "s"] == [
        ("s", "a-sink", ("a",)), ("s", "double", ("b",))]
    assert [(wk.pipeline, wk.tag) for wk in doc.vertex("s").works] == [(0, "a"), (1, "b")]


def test_unrelated_pipelines_are_separate_documents() -> None:
    ab = ApplicationBuilder("Two Apps").new_pipeline("left", w.tcp_source()).to(w.double)
    ab.to_sink(w.tcp_sink())
    ab.new_pipeline("right", w.tcp_source("7011")).to(w.double).to_sink(w.tcp_sink("7003"))
    graph = plan_of(ab)
    assert [d.name for d in graph.docs] == ["two-apps-left", "two-apps-right"]
    names = [v.name for v in graph.vertices()]
    assert len(set(names)) == len(names)  # unique across documents too
    assert graph.find("right-double")[0].name == "two-apps-right"


def test_find_unknown_vertex_names_the_known_ones() -> None:
    graph = plan_of(one_pipeline().to(w.double).to_sink(w.tcp_sink()))
    with pytest.raises(KeyError) as err:
        graph.find("nope")
    assert "no vertex named 'nope'; the plan has: source, double, sink" in str(err.value)


# ------------------------------------------------------------ names


def check_names(graph: VertexGraph) -> None:
    seen: set[str] = set()
    for doc in graph.docs:
        assert DNS_1035.match(doc.name), doc.name
        for v in doc.vertices:
            assert DNS_1035.match(v.name), v.name
            assert len(doc.name) + len(v.name) <= 53, (doc.name, v.name)
            assert v.name not in seen, v.name
            seen.add(v.name)
        for e in doc.edges:
            assert e.src in {v.name for v in doc.vertices}
            assert e.dst in {v.name for v in doc.vertices}


@pytest.mark.parametrize("name", sorted(goldens.ARGS))
@pytest.mark.parametrize("fuse", [False, True])
def test_app_names_are_valid(name: str, fuse: bool) -> None:
    check_names(plan_app(name, fuse=fuse))


def test_very_long_and_colliding_names_stay_valid_unique_and_short() -> None:
    long = "x" * 80
    steps = [nfbuilder.computation(name=prefix + long)(lambda d: d)
             for prefix in ("Step ", "step-", "STEP_", "step  ")]
    ab = ApplicationBuilder("A" * 100).new_pipeline("P" * 90, w.tcp_source())
    for step in steps:
        ab.to(step)
    ab.to_sinks([w.tcp_sink(), w.kafka_sink(), w.tcp_sink("7004")])
    ab.new_pipeline("Q" * 90, w.tcp_source("7011")).to(steps[0]).to_stateful(
        w.count, w.Counter, "state " + long).to_sink(w.tcp_sink("7003"))
    ab.new_pipeline("R" * 90, w.tcp_source("7012")).to(steps[1]).done()
    graph = plan_of(ab)
    assert len(graph.docs) == 3
    assert len({d.name for d in graph.docs}) == 3
    check_names(graph)
    assert plan_of(ab) == graph  # stable hashes, not random ones


@pytest.mark.parametrize("step_name, vertex", [("123", "v-123"), ("!!!", "v"),
                                               ("Déjà vu", "d-j-vu")])
def test_step_names_become_dns_labels(step_name: str, vertex: str) -> None:
    comp = nfbuilder.computation(name=step_name)(lambda d: d)
    doc = only_doc(plan_of(one_pipeline().to(comp).to_sink(w.tcp_sink())))
    assert [v.name for v in doc.vertices] == ["source", vertex, "sink"]


def test_step_named_like_a_role_does_not_collide() -> None:
    src = nfbuilder.computation(name="source")(lambda d: d)
    sink = nfbuilder.computation(name="sink")(lambda d: d)
    doc = only_doc(plan_of(one_pipeline().to(src).to(sink).to_sink(w.tcp_sink())))
    assert [v.name for v in doc.vertices] == ["source", "source-2", "sink", "sink-2"]
    check_names(plan_of(one_pipeline().to(src).to(sink).to_sink(w.tcp_sink())))


# ------------------------------------------------------------ fusion


def test_fuse_coalesces_leading_stateless_run_into_the_source() -> None:
    graph = plan_app("celsius", fuse=True)
    doc = only_doc(graph)
    assert [v.name for v in doc.vertices] == ["source", "sink"]
    assert steps(doc.vertex("source")) == ("multiply by 1.8", "add 32")
    assert graph.options.fuse


def test_fuse_coalesces_stateless_runs_between_state_steps() -> None:
    last = nfbuilder.computation(name="last")(lambda d: d)
    ab = one_pipeline().to(w.double).to(w.add_one).to_state_partition(
        w.count, w.Counter, "s", w.by_parity, [0, 1]).to(w.split).to(last).to_sink(w.tcp_sink())
    unfused = only_doc(plan_of(ab))
    assert [v.name for v in unfused.vertices] == [
        "source", "double", "add-one", "s", "split", "last", "sink"]
    fused = only_doc(plan_of(ab, fuse=True))
    assert [(v.name, steps(v)) for v in fused.vertices] == [
        ("source", ("double", "add one")), ("s", ("count",)), ("split-to-last", ("split", "last")),
        ("sink", ())]
    # the fused source keys for the state
    assert fused.vertex("source").works[0].key_by == fused.vertex("s").works[0].steps[0]
    assert edges(fused) == [("source", "s", ()), ("s", "split-to-last", ()),
                            ("split-to-last", "sink", ())]


def test_fuse_keeps_a_parallel_leading_run_out_of_the_single_replica_source() -> None:
    ab = one_pipeline().to(w.double).to_parallel(w.add_one).to_sink(w.tcp_sink())
    fused = only_doc(plan_of(ab, fuse=True))
    assert [(v.name, steps(v)) for v in fused.vertices] == [
        ("source", ()), ("double-to-add-one", ("double", "add one")), ("sink", ())]
    assert fused.vertex("double-to-add-one").max_replicas > 1


def test_fuse_never_merges_state_steps() -> None:
    ab = one_pipeline().to_stateful(w.count, w.Counter, "a").to_stateful(
        w.count_again, w.Counter, "b").to_sink(w.tcp_sink())
    doc = only_doc(plan_of(ab, fuse=True))
    assert [(v.name, v.state_name) for v in doc.vertices] == [
        ("source", None), ("a", "a"), ("b", "b"), ("sink", None)]


def test_fuse_keeps_a_fused_to_parallel_run_autoscaled() -> None:
    ab = one_pipeline().to_stateful(w.count, w.Counter, "s").to(w.double).to_parallel(
        w.add_one).to_sink(w.tcp_sink())
    doc = only_doc(plan_of(ab, fuse=True, max_replicas=6))
    assert doc.vertex("double-to-add-one").max_replicas == 6


# ------------------------------------------------------------ options and determinism


@pytest.mark.parametrize("name", sorted(goldens.ARGS))
def test_plan_is_deterministic(name: str) -> None:
    assert plan_app(name) == plan_app(name)
    assert plan_app(name, fuse=True) == plan_app(name, fuse=True)


@pytest.mark.parametrize("bad", [{"partitions": 0}, {"max_replicas": 0}])
def test_plan_options_reject_nonsense(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        PlanOptions(**bad)


def test_describe_has_one_line_per_vertex() -> None:
    graph = plan_app("word_count")
    assert graph.describe() == [
        "word-count-application/source: source/udsource [Split and Count] tcp source",
        ("word-count-application/split-into-words: map/udf [Split and Count] "
         "'split into words'; autoscaled to 4"),
        ("word-count-application/word-totals: map/udf [Split and Count] 'count word' -> "
         "encode for tcp sink; state 'word totals', 2 partition(s), ordered"),
        "word-count-application/sink: sink/udsink [Split and Count] tcp sink",
    ]
