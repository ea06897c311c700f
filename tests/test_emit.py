"""The emitter: every app's manifest passes the CRD schema and controller rules, and the
objects it writes carry what the mapping promises (scale, partitions, commands, secrets)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import wallaroo_objects as w
import yaml

import nfbuilder
from nfbuilder import ApplicationBuilder
from nfbuilder.emit.artifacts import render_artifacts
from nfbuilder.emit.manifest import dump_yaml, emit
from nfbuilder.emit.validate import check_documents
from nfbuilder.loader import load_app
from nfbuilder.plan import AppRef, PlanOptions, VertexGraph, plan, serve_command
from nfbuilder.topology import from_actions

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the example apps live in the repository, not in the package
    sys.path.insert(0, str(ROOT))
from apps import goldens  # noqa: E402 - importable only after ROOT is on sys.path

OPTIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "fuse": {"fuse": True},
    "partitions3": {"partitions": 3},
    "secret": {"state_store_secret": "st:url"},
    "namespaced": {"namespace": "streams", "image": "registry.example/app:1.2"},
    "unordered": {"ordered": False},
    "isbsvc": {"isbsvc": "jetstream", "sink_retry_cap": 60},
}


def app_graph(name: str, **options: Any) -> tuple[VertexGraph, AppRef]:
    loaded = load_app(str(goldens.app_path(name)), goldens.ARGS[name])
    ref = AppRef(loaded.module_name, loaded.args)
    return plan(loaded.app, PlanOptions(**options), ref), ref


def emitted(name: str, **options: Any) -> list[dict[str, Any]]:
    """Emit, dump and load back: what a cluster would read."""
    graph, ref = app_graph(name, **options)
    return list(yaml.safe_load_all(dump_yaml(emit(graph))))


def pipelines(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "Pipeline"]


def vertices(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for p in pipelines(docs) for v in p["spec"]["vertices"]}


def container_of(vertex: dict[str, Any]) -> dict[str, Any]:
    for path in (("source", "udsource"), ("source", "transformer"), ("udf",), ("sink", "udsink")):
        node: Any = vertex
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node:
            return node["container"]  # type: ignore[no-any-return]
    raise KeyError(f"vertex {vertex['name']} has no container")


def own(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The vertices with a container of ours (not Numaflow's built-in sinks)."""
    return {n: v for n, v in vertices(docs).items()
            if not {"log", "blackhole", "kafka"} & set(v.get("sink", {}))}


def hand_built(ab: ApplicationBuilder, **options: Any) -> list[dict[str, Any]]:
    graph = plan(from_actions(ab.build()), PlanOptions(**options), AppRef("handmade", ("--x",)))
    return list(yaml.safe_load_all(dump_yaml(emit(graph))))


# ------------------------------------------------------------ validity


@pytest.mark.parametrize("option", sorted(OPTIONS))
@pytest.mark.parametrize("name", sorted(goldens.ARGS))
def test_every_app_manifest_is_valid(name: str, option: str) -> None:
    docs = emitted(name, **OPTIONS[option])
    findings = check_documents(docs)
    assert findings == [], "\n".join(str(f) for f in findings)
    assert pipelines(docs), "no Pipeline document"


def awkward_apps() -> dict[str, ApplicationBuilder]:
    long = "y" * 70
    step = nfbuilder.computation(name="Step " + long)(lambda d: d)
    two = ApplicationBuilder("Two").new_pipeline("a", w.tcp_source()).to(w.double)
    two.to_sinks([w.tcp_sink(), w.kafka_sink(), w.tcp_sink("7004")])
    two.new_pipeline("b", w.tcp_source("7011")).to(w.double).done()  # needs a blackhole
    longs = ApplicationBuilder("L" * 99).new_pipeline("P" * 80, w.kafka_source()).to(step)
    longs.to_state_partition(w.count, w.Counter, "S" * 80, w.by_parity).to_sink(w.kafka_sink())
    longs.new_pipeline("Q" * 80, w.tcp_source("7011")).to_state_partition(
        w.count_again, w.Counter, "S" * 80, w.by_parity).to(step).to_sink(w.tcp_sink())
    return {"two": two, "long": longs}


@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("which", ["two", "long"])
def test_awkward_hand_built_apps_are_valid(which: str, fuse: bool) -> None:
    docs = hand_built(awkward_apps()[which], fuse=fuse)
    findings = check_documents(docs)
    assert findings == [], "\n".join(str(f) for f in findings)


def test_emit_is_deterministic() -> None:
    for name in goldens.ARGS:
        a, ref = app_graph(name)
        b, _ = app_graph(name)
        assert dump_yaml(emit(a)) == dump_yaml(emit(b))


# ------------------------------------------------------------ what the objects say


def test_container_command_is_exactly_the_serve_command() -> None:
    docs = emitted("market_spread")
    for name, vertex in own(docs).items():
        c = container_of(vertex)
        assert c["command"] + c["args"] == [
            "python", "-m", "nfbuilder", "serve", "--app", "market_spread", "--vertex", name,
            "--", "--in", "127.0.0.1:7010,127.0.0.1:7011", "--out", "127.0.0.1:7002"]
        assert c["image"] == "nfbuilder-app:latest"
        transformer = vertex.get("source", {}).get("transformer")
        if "udsource" in vertex.get("source", {}):  # a TCP source: its decoder's container
            assert transformer["container"]["args"] == [
                "--app", "market_spread", "--vertex", name, "--transformer", "--", "--in",
                "127.0.0.1:7010,127.0.0.1:7011", "--out", "127.0.0.1:7002"]


def test_fused_command_asks_for_fusion() -> None:
    assert list(serve_command(AppRef("m", ("--in", "h:1")), "v", fuse=True)) == [
        "python", "-m", "nfbuilder", "serve", "--app", "m", "--vertex", "v", "--fuse",
        "--", "--in", "h:1"]
    c = container_of(vertices(emitted("celsius", fuse=True))["source"])
    assert c["args"][:5] == ["--app", "celsius", "--vertex", "source", "--fuse"]


@pytest.mark.parametrize("name", sorted(goldens.ARGS))
def test_ordered_vertices_have_partitions_and_no_scale(name: str) -> None:
    for vertex in vertices(emitted(name, partitions=3)).values():
        if "ordered" in vertex:
            assert vertex["ordered"] == {"enabled": True}
            assert "scale" not in vertex
            assert vertex["partitions"] in (1, 3)
        else:
            assert "partitions" not in vertex
            assert vertex["scale"]["min"] == 1


def test_state_vertices_partitions() -> None:
    assert vertices(emitted("word_count", partitions=3))["word-totals"]["partitions"] == 3
    assert vertices(emitted("alphabet", partitions=3))["letter-state"]["partitions"] == 1


def test_to_is_ordered_and_to_parallel_is_scale_max() -> None:
    v = vertices(emitted("word_count", max_replicas=7))
    assert v["split-into-words"]["scale"] == {"min": 1, "max": 7}
    serial = vertices(emitted("celsius"))["add-32"]
    assert (serial["partitions"], serial["ordered"], "scale" in serial) == (
        1, {"enabled": True}, False)
    assert vertices(emitted("celsius", ordered=False))["add-32"]["scale"] == {"min": 1, "max": 4}


def test_sources_feeding_ordered_vertices_write_one_at_a_time() -> None:
    assert vertices(emitted("celsius"))["source"]["limits"] == {"concurrency": 1}
    # word count's source feeds the autoscaled split: nothing to keep in order there
    assert "limits" not in vertices(emitted("word_count"))["source"]


def test_sinks_retry_with_a_capped_backoff_as_long_as_the_receiver_is_away() -> None:
    retry = vertices(emitted("reverse", sink_retry_interval=0.2, sink_retry_cap=30))["sink"][
        "sink"]["retryStrategy"]
    assert retry == {"backoff": {"interval": "200ms", "factor": 2.0, "cap": "30s"},
                     "onFailure": "retry"}
    with pytest.raises(ValueError, match=r"the sink retry cap \(0.01 s\) is below its first "
                                         r"interval \(0.05 s\)"):
        PlanOptions(sink_retry_cap=0.01)


def test_isbsvc_names_the_inter_step_buffer_service() -> None:
    (p,) = pipelines(emitted("reverse", isbsvc="jetstream"))
    assert p["spec"]["interStepBufferServiceName"] == "jetstream"
    assert "interStepBufferServiceName" not in pipelines(emitted("reverse"))[0]["spec"]


def test_state_store_secret_uses_secret_key_ref_and_no_url() -> None:
    graph, ref = app_graph("word_count", state_store_secret="st:url",
                           state_store="redis://user:hunter2@redis:6379/0")
    text = dump_yaml(emit(graph))
    assert "hunter2" not in text and "redis://" not in text
    env = container_of(vertices(list(yaml.safe_load_all(text)))["word-totals"])["env"]
    assert {"name": "NFBUILDER_STATE_STORE",
            "valueFrom": {"secretKeyRef": {"name": "st", "key": "url"}}} in env
    files = render_artifacts(graph)
    assert b'"redis>=5"' in files["Dockerfile"]


def test_state_store_secret_key_defaults_to_url() -> None:
    env = container_of(vertices(emitted("alphabet", state_store_secret="mysecret"))[
        "letter-state"])["env"]
    assert env[-1]["valueFrom"] == {"secretKeyRef": {"name": "mysecret", "key": "url"}}


def test_state_store_url_and_default() -> None:
    env = container_of(vertices(emitted("alphabet"))["letter-state"])["env"]
    assert {"name": "NFBUILDER_STATE_STORE", "value": "memory://"} in env
    env = container_of(vertices(emitted("alphabet", state_store="sqlite:///s.db"))[
        "letter-state"])["env"]
    assert {"name": "NFBUILDER_STATE_STORE", "value": "sqlite:///s.db"} in env
    # stateless vertices get no store at all
    assert all(e["name"] != "NFBUILDER_STATE_STORE"
               for e in container_of(vertices(emitted("alphabet"))["sink"])["env"])


def test_tcp_source_gets_a_service_on_its_port() -> None:
    docs = emitted("market_spread", namespace="streams")
    services = [d for d in docs if d["kind"] == "Service"]
    assert [(s["metadata"]["name"], s["metadata"]["namespace"], s["spec"]["ports"][0]["port"],
             s["spec"]["selector"]["numaflow.numaproj.io/vertex-name"]) for s in services] == [
        ("market-spread-orders-source-tcp", "streams", 7010, "orders-source"),
        ("market-spread-market-data-source-tcp", "streams", 7011, "market-data-source")]
    assert services[0]["spec"]["ports"][0]["targetPort"] == 7010
    assert services[0]["spec"]["selector"]["numaflow.numaproj.io/pipeline-name"] == "market-spread"
    src = vertices(docs)["orders-source"]
    assert src["scale"] == {"min": 1, "max": 1}
    assert {"name": "NFBUILDER_TCP_BIND_HOST", "value": "0.0.0.0"} in container_of(src)["env"]


def test_kafka_source_and_sink() -> None:
    docs = emitted("celsius_kafka")
    assert not [d for d in docs if d["kind"] == "Service"]
    (p,) = pipelines(docs)
    v = vertices(docs)
    kafka = v["source"]["source"]["kafka"]
    assert kafka["brokers"] == ["127.0.0.1:9092"] and kafka["topic"] == "test-in"
    assert kafka["consumerGroup"] == f"{p['metadata']['name']}-source"
    assert "transformer" in v["source"]["source"]
    assert "encode" not in v  # the last step's vertex encodes for the built-in Kafka sink
    assert v["sink"]["sink"]["kafka"] == {
        "brokers": ["127.0.0.1:9092"], "topic": "test-out", "setKey": True,
        "config": "linger.ms: 10\nmessage.max.bytes: 100000\n"}
    assert {"from": "add-32", "to": "sink", "conditions": {
        "tags": {"operator": "not", "values": ["nfbuilder-dead-letter"]}}} in p["spec"]["edges"]


def test_market_spread_edges_carry_tag_conditions() -> None:
    (p,) = pipelines(emitted("market_spread"))
    not_dead = {"tags": {"operator": "not", "values": ["nfbuilder-dead-letter"]}}
    dead = {"tags": {"operator": "or", "values": ["nfbuilder-dead-letter"]}}
    assert p["spec"]["edges"] == [
        {"from": "orders-source", "to": "symbol-data", "conditions": not_dead},
        {"from": "symbol-data", "to": "orders-sink",
         "conditions": {"tags": {"operator": "or", "values": ["orders"]}}},
        {"from": "market-data-source", "to": "symbol-data", "conditions": not_dead},
        {"from": "orders-source", "to": "dead-letters", "conditions": dead},
        {"from": "symbol-data", "to": "dead-letters", "conditions": dead},
        {"from": "market-data-source", "to": "dead-letters", "conditions": dead},
    ]
    graph, _ = app_graph("market_spread")
    assert p["metadata"]["annotations"] == {"nfbuilder.io/application": "market-spread",
                                            "nfbuilder.io/plan-digest": graph.digest}


def test_blackhole_and_two_documents() -> None:
    docs = hand_built(awkward_apps()["two"])
    assert [d["metadata"]["name"] for d in pipelines(docs)] == ["two-a", "two-b"]
    assert vertices(docs)["b-end"]["sink"] == {"blackhole": {}}


def test_namespace_image_and_labels() -> None:
    docs = emitted("reverse", namespace="streams", image="registry.example/app:1.2")
    meta = docs[0]["metadata"]
    assert meta["namespace"] == "streams"
    assert meta["labels"] == {"app.kubernetes.io/name": "reverse-word",
                              "app.kubernetes.io/managed-by": "nfbuilder"}
    assert all(container_of(v)["image"] == "registry.example/app:1.2"
               for v in own(docs).values())


def test_yaml_has_no_nulls_and_no_aliases() -> None:
    graph, ref = app_graph("market_spread")
    text = dump_yaml(emit(graph))
    assert "null" not in text and "&id" not in text and "*id" not in text
    assert text.startswith("---\napiVersion: numaflow.numaproj.io/v1alpha1\nkind: Pipeline\n")


# ------------------------------------------------------------ artifacts


def test_artifacts_have_an_entrypoint_per_container_vertex() -> None:
    graph, ref = app_graph("celsius_kafka")
    files = render_artifacts(graph, app_file=str(goldens.app_path("celsius_kafka")))
    with_container = {v.name for v in graph.vertices() if v.container}
    assert with_container == {"source", "multiply-by-1-8", "add-32"}  # not the kafka sink
    assert {f for f in files if f.startswith("entrypoints/")} == {
        f"entrypoints/{n}.py" for n in with_container}
    for rel, content in files.items():
        if rel.endswith(".py"):
            compile(content, rel, "exec")  # valid Python
    entry = files["entrypoints/add-32.py"].decode()
    assert "main(['serve', '--app', 'celsius_kafka', '--vertex', 'add-32', '--', " in entry
    assert files["celsius_kafka.py"] == goldens.app_path("celsius_kafka").read_bytes()
    assert b"redis" not in files["Dockerfile"]
    assert b"FROM python:3.11-slim" in files["Dockerfile"]
