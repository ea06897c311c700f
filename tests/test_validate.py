"""Tests for nfbuilder.emit.validate: upstream examples pass, each rule family reports its text."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from nfbuilder.emit.manifest_rules import parse_go_duration
from nfbuilder.emit.validate import (
    Finding,
    check_documents,
    check_file,
    check_pipeline,
    check_yaml_text,
)

EXAMPLES = sorted((Path(__file__).parent / "data" / "numaflow-examples").glob("*.yaml"))


def valid() -> dict[str, Any]:
    """udsource -> ordered map with partitions -> udsink: the shape nfbuilder emits."""
    return {
        "apiVersion": "numaflow.numaproj.io/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": "word-count"},
        "spec": {
            "vertices": [
                {"name": "in", "scale": {"min": 1, "max": 1},
                 "source": {"udsource": {"container": {"image": "app:1"}}}},
                {"name": "count", "partitions": 2, "ordered": {"enabled": True},
                 "udf": {"container": {"image": "app:1", "args": ["serve", "count"]}}},
                {"name": "out", "sink": {"udsink": {"container": {"image": "app:1"}}}},
            ],
            "edges": [{"from": "in", "to": "count"}, {"from": "count", "to": "out"}],
        },
    }


def messages(manifest: dict[str, Any]) -> list[str]:
    return [str(f) for f in check_pipeline(manifest)]


def only(manifest: dict[str, Any]) -> Finding:
    findings = check_pipeline(manifest)
    assert len(findings) == 1, [str(f) for f in findings]
    return findings[0]


def test_upstream_examples_are_all_present() -> None:
    assert len(EXAMPLES) == 10


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_upstream_example_passes(path: Path) -> None:
    assert [str(f) for f in check_file(path)] == []


def test_base_manifest_is_valid() -> None:
    assert messages(valid()) == []


def test_finding_str() -> None:
    assert str(Finding("spec.edges[0]", "boom", 2)) == "doc 2: spec.edges[0]: boom"
    assert str(Finding("", "boom")) == "doc 0: boom"


def test_header_kind_and_api_version() -> None:
    m = valid()
    m["apiVersion"] = "v1"
    f = only(m)
    assert (f.path, f.message) == (
        "apiVersion", "apiVersion is 'v1'; a Pipeline must use 'numaflow.numaproj.io/v1alpha1'")


def test_non_mapping_document_is_a_finding() -> None:
    assert messages([1, 2]) == [  # type: ignore[arg-type]
        ("doc 0: the document is a list ([1, 2]), not a mapping; expected a Kubernetes object "
         "with apiVersion, kind and metadata")]


def test_unknown_field() -> None:
    m = valid()
    m["spec"]["vertices"][1]["udf"]["retryStrategy"] = {"onFailure": "drop"}
    f = only(m)
    assert f.path == "spec.vertices[1].udf.retryStrategy"
    assert f.message == (
        "unknown field 'retryStrategy' in 'spec.vertices[1].udf' (Numaflow v1.8.3 Pipeline CRD "
        "schema); kubectl rejects it and the API server would drop it; remove it or fix its "
        "spelling (known fields: container, groupBy)")


def test_unknown_field_in_empty_object_type() -> None:
    m = valid()
    m["spec"]["vertices"][2]["sink"] = {"log": {"level": "info"}}
    assert messages(m) == [
        ("doc 0: spec.vertices[2].sink.log.level: unknown field 'level' in "
         "'spec.vertices[2].sink.log' (Numaflow v1.8.3 Pipeline CRD schema); kubectl rejects it "
         "and the API server would drop it; remove it or fix its spelling "
         "('spec.vertices[2].sink.log' takes no fields (write {}))")]


def test_schema_type_error() -> None:
    m = valid()
    m["spec"]["vertices"][0]["scale"]["max"] = "one"
    assert messages(m) == [
        ("doc 0: spec.vertices[0].scale.max: value 'one' has the wrong type: the schema expects "
         "integer (Numaflow v1.8.3 Pipeline CRD schema); write a value of type integer")]


def test_int32_range() -> None:
    m = valid()
    m["spec"]["vertices"][1]["partitions"] = 2**31
    assert "value 2147483648 does not fit in int32" in messages(m)[0]


def test_null_log_sink() -> None:
    text = """\
apiVersion: numaflow.numaproj.io/v1alpha1
kind: Pipeline
metadata: {name: p}
spec:
  vertices:
    - name: in
      source: {http: {}}
    - name: out
      sink:
        log:
  edges: [{from: in, to: out}]
"""
    assert [str(f) for f in check_yaml_text(text)] == [
        ("doc 0: spec.vertices[1].sink.log: null value at spec.vertices[1].sink.log; the API "
         "server drops nulls (so 'log:' becomes a sink with no type); write {} for an empty object "
         "or remove the key"),
        ("doc 0: spec.vertices[1].sink: sink of vertex 'out' sets no sink type; set exactly one of "
         "log, blackhole, kafka, udsink, sqs, pulsar, serve (write log: {}, not log:)")]
    assert check_yaml_text(text.replace("log:", "log: {}")) == []


def test_duplicate_key() -> None:
    text = """\
apiVersion: numaflow.numaproj.io/v1alpha1
kind: Pipeline
metadata: {name: p}
spec:
  vertices:
    - name: in
      source: {http: {}}
    - name: out
      sink: {log: {}}
      sink: {blackhole: {}}
  edges: [{from: in, to: out}]
"""
    assert [str(f) for f in check_yaml_text(text)] == [
        ("doc 0: spec.vertices[1].sink: duplicate key 'sink' (lines 9 and 10); YAML keeps only "
         "the last one and kubectl rejects the file; remove one of them")]


def test_bad_duration_60() -> None:
    m = valid()
    m["spec"]["limits"] = {"readTimeout": "60"}
    f = only(m)
    assert (f.path, f.message) == (
        "spec.limits.readTimeout",
        ("limits.readTimeout '60' is not a Go duration (such as \"60s\", \"500ms\", \"1h30m\"); "
         "the controller cannot decode it; add a unit, e.g. \"60s\""))


@pytest.mark.parametrize("text, seconds", [
    ("1h30m", 5400.0), ("500ms", 0.5), ("1.5s", 1.5), ("0", 0.0), ("-2m", -120.0), (".5s", 0.5),
    ("1.s", 1.0), ("3µs", 3e-6), ("60", None), ("", None), ("1sec", None), ("s", None),
    (".s", None), ("1h m", None), ("+0", 0.0), ("1d", None),
])
def test_go_duration_grammar(text: str, seconds: float | None) -> None:
    parsed = parse_go_duration(text)
    if seconds is None:
        assert parsed is None
    else:
        assert parsed == pytest.approx(seconds)


def test_name_too_long() -> None:
    m = valid()
    m["metadata"]["name"] = "p" * 30
    m["spec"]["vertices"][1]["name"] = "c" * 24
    for e in m["spec"]["edges"]:
        e["from"], e["to"] = [("c" * 24 if x == "count" else x) for x in (e["from"], e["to"])]
    f = only(m)
    assert (f.path, f.message) == (
        "spec.vertices[1].name",
        (f"pipeline name '{'p' * 30}' plus vertex name '{'c' * 24}' is 54 characters, over 53 "
         f"(the Service '{'p' * 30}-{'c' * 24}-headless' must fit in 63); shorten the vertex or "
         "pipeline name"))


def test_vertex_name_not_dns1035() -> None:
    m = valid()
    m["spec"]["vertices"][2]["name"] = "Word_Count"
    m["spec"]["edges"][1]["to"] = "Word_Count"
    f = only(m)
    assert f.message == ("vertex name 'Word_Count' is not a DNS-1035 label (lower-case letters, "
                         "digits and '-', starting with a letter); rename the step")


def test_disconnected_graph() -> None:
    m = valid()
    m["spec"]["vertices"] += [
        {"name": "in2", "source": {"http": {}}},
        {"name": "out2", "sink": {"blackhole": {}}},
    ]
    m["spec"]["edges"].append({"from": "in2", "to": "out2"})
    assert messages(m) == [
        ("doc 0: spec.edges: the pipeline graph is not connected: its parts {count, in, out}; "
         "{in2, out2} share no edge; Numaflow rejects disjoint pipelines, connect them or emit "
         "each part as its own Pipeline")]


def test_vertex_in_no_edge() -> None:
    m = valid()
    m["spec"]["vertices"].append({"name": "lost", "sink": {"blackhole": {}}})
    assert messages(m) == [
        ("doc 0: spec.vertices[3]: sink vertex 'lost' has no incoming edge; add an edge into it "
         "from a source or map vertex"),
        "doc 0: spec.vertices[3]: vertex 'lost' is not in any edge; connect it or remove it"]


def test_ordered_vertex_with_scale_max() -> None:
    m = valid()
    m["spec"]["vertices"][1]["scale"] = {"max": 4}
    f = only(m)
    assert (f.path, f.message) == (
        "spec.vertices[1].scale",
        ("ordered vertices must not set scale.min/max: vertex 'count' sets scale.max: 4; its "
         "replicas are fixed to its partition count, so remove scale.max and set partitions "
         "instead"))


def test_pipeline_wide_ordered_applies_to_sinks() -> None:
    m = valid()
    m["spec"]["ordered"] = {"enabled": True}
    m["spec"]["vertices"][2]["scale"] = {"min": 1}
    assert [f.path for f in check_pipeline(m)] == ["spec.vertices[2].scale"]
    m["spec"]["vertices"][2]["ordered"] = {"enabled": False}
    assert messages(m) == []


def test_edge_to_missing_vertex() -> None:
    m = valid()
    m["spec"]["edges"][1]["to"] = "ouf"
    assert messages(m)[0] == (
        "doc 0: spec.edges[1]: edge 'count' -> 'ouf' refers to vertex 'ouf', which is not in "
        "spec.vertices (known: in, count, out); add the vertex or fix the name")


def test_concatenation_collision_edges() -> None:
    m = valid()
    vs = m["spec"]["vertices"]
    vs[1]["name"], vs[2]["name"] = "a", "bc"
    vs += [{"name": "ab", "udf": {"container": {"image": "app:1"}}},
           {"name": "c", "sink": {"log": {}}}]
    m["spec"]["edges"] = [{"from": "in", "to": "a"}, {"from": "a", "to": "bc"},
                          {"from": "in", "to": "ab"}, {"from": "ab", "to": "c"}]
    assert messages(m) == [
        ("doc 0: spec.edges[3]: edge 'ab' -> 'c' collides with spec.edges[1] 'a' -> 'bc': the "
         "controller identifies an edge by from+to joined without a separator ('abc') and rejects "
         "the pair; rename one of the vertices")]


def test_duplicate_edge() -> None:
    m = valid()
    m["spec"]["edges"].append({"from": "in", "to": "count"})
    assert messages(m) == [
        ("doc 0: spec.edges[2]: edge 'in' -> 'count' duplicates spec.edges[0]; keep one edge per "
         "(from, to) pair")]


def test_source_with_in_edge() -> None:
    m = valid()
    m["spec"]["edges"].append({"from": "count", "to": "in"})
    assert messages(m) == [
        ("doc 0: spec.edges[2]: source vertex 'in' has an incoming edge from 'count'; a source "
         "cannot receive messages, remove the edge or point it at a map or sink vertex")]


def test_kafka_config_line_with_url() -> None:
    m = valid()
    m["spec"]["vertices"][2]["sink"] = {"kafka": {
        "brokers": ["b:9092"], "topic": "t",
        "config": "compression.type: gzip\nsasl.oauthbearer.token.endpoint.url: https://x/t\n"}}
    f = only(m)
    assert (f.path, f.message) == (
        "spec.vertices[2].sink.kafka.config",
        ("kafka config line 2 'sasl.oauthbearer.token.endpoint.url: https://x/t' of vertex 'out' "
         "has 2 ':' characters; the data plane keeps only 'key: value' lines with exactly one ':' "
         "and silently drops this one (e.g. a URL value); remove it or set the option another way"))


def test_kafka_config_nested_yaml() -> None:
    m = valid()
    m["spec"]["vertices"][2]["sink"] = {"kafka": {
        "brokers": ["b:9092"], "topic": "t", "config": "producer:\n  retries: 3\n"}}
    found = messages(m)
    assert len(found) == 2
    assert "kafka config line 1 'producer:' of vertex 'out' is not a flat 'key: value' pair" \
        in found[0]


def test_exactly_one_kind_and_typeless_source() -> None:
    m = valid()
    m["spec"]["vertices"][1]["sink"] = {"log": {}}
    m["spec"]["vertices"][0]["source"] = {}
    assert messages(m) == [
        ("doc 0: spec.vertices[0].source: source of vertex 'in' sets no source type; set exactly "
         "one of generator, http, kafka, nats, jetstream, pulsar, sqs, udsource, serving (a "
         "typeless source fails at run time)"),
        ("doc 0: spec.vertices[1]: vertex 'count' sets udf and sink; set exactly one of source, "
         "udf or sink")]


def test_missing_images() -> None:
    m = valid()
    m["spec"]["vertices"][1]["udf"]["container"]["image"] = ""
    del m["spec"]["vertices"][2]["sink"]["udsink"]["container"]["image"]
    assert messages(m) == [
        ("doc 0: spec.vertices[1].udf.container: udf of vertex 'count' has no container image; "
         "set udf.container.image (every UDF is a container)"),
        ("doc 0: spec.vertices[2].sink.udsink: sink.udsink of vertex 'out' has no container "
         "image; set udsink.container.image")]


def test_reduce_rules() -> None:
    m = valid()
    m["spec"]["vertices"][1] = {
        "name": "count", "partitions": 2,
        "udf": {"container": {"image": "app:1"},
                "groupBy": {"window": {"fixed": {"length": "60"}}}}}
    assert messages(m) == [
        ("doc 0: spec.vertices[1].udf.groupBy.window.fixed.length: window.fixed.length '60' is "
         "not a Go duration (such as \"60s\", \"500ms\", \"1h30m\"); the controller cannot decode "
         "it; add a unit, e.g. \"60s\""),
        ("doc 0: spec.vertices[1].udf.groupBy.storage: reduce vertex 'count': groupBy.storage has "
         "no storage; set exactly one of persistentVolumeClaim, emptyDir: {} or no_store: {}"),
        ("doc 0: spec.vertices[1].udf.groupBy: reduce vertex 'count' sets partitions: 2 but "
         "groupBy.keyed is not true; a non-keyed reduce must have at most 1 partition, set keyed: "
         "true or partitions: 1")]


def test_reduce_after_cycle() -> None:
    m = valid()
    m["spec"]["vertices"][1] = {
        "name": "count", "udf": {"container": {"image": "app:1"}, "groupBy": {
            "window": {"fixed": {"length": "60s"}}, "storage": {"emptyDir": {}}}}}
    m["spec"]["vertices"].append({"name": "loop", "udf": {"container": {"image": "app:1"}}})
    m["spec"]["edges"] = [{"from": "in", "to": "loop"}, {"from": "loop", "to": "loop"},
                          {"from": "loop", "to": "count"}, {"from": "count", "to": "out"}]
    assert messages(m) == [
        ("doc 0: spec.vertices[1]: reduce vertex 'count' is at or downstream of a cycle through "
         "'loop'; cycles create late data, so Numaflow rejects this; move the reduce before the "
         "cycle or remove the cycle")]


def test_sink_retry_strategy_rules() -> None:
    m = valid()
    m["spec"]["vertices"][2]["sink"]["retryStrategy"] = {
        "backoff": {"interval": "1s", "cap": "10ms", "steps": 0}, "onFailure": "fallback"}
    assert messages(m) == [
        ("doc 0: spec.vertices[2].sink.retryStrategy.backoff.steps: sink of vertex 'out': "
         "backoff.steps is 0; set a positive number of retries"),
        ("doc 0: spec.vertices[2].sink.retryStrategy.backoff.cap: sink of vertex 'out': "
         "backoff.cap '10ms' is below the interval (default 1ms); raise the cap"),
        ("doc 0: spec.vertices[2].sink.retryStrategy.onFailure: sink of vertex 'out' sets "
         "onFailure: fallback but no sink.fallback type; add sink.fallback (e.g. a udsink) or use "
         "onFailure: retry")]


def test_scale_update_strategy_sidecars_side_inputs() -> None:
    m = valid()
    v = m["spec"]["vertices"]
    v[0]["scale"] = {"min": 3, "max": 2}
    v[0]["sidecars"] = [{"name": "numa", "image": "x"}]
    v[2]["updateStrategy"] = {"rollingUpdate": {"maxUnavailable": "2"}}
    v[2]["sideInputs"] = ["rules"]
    assert messages(m) == [
        ("doc 0: spec.vertices[0].scale: scale.min (3) of vertex 'in' is greater than scale.max "
         "(2); make min <= max"),
        ("doc 0: spec.vertices[0].sidecars[0]: container name 'numa' in sidecars of vertex 'in' is "
         "reserved by Numaflow (fb-udsink, init, init-side-inputs, numa, ons-udsink, "
         "side-inputs-synchronizer, transformer, udf, udsi, udsink, udsource); rename the "
         "container"),
        ("doc 0: spec.vertices[0].sidecars: source vertex 'in' sets sidecars, which Numaflow does "
         "not allow on sources; remove them"),
        ("doc 0: spec.vertices[2].updateStrategy.rollingUpdate.maxUnavailable: maxUnavailable '2' "
         "of vertex 'out' is a string without '%'; write an integer or a percentage such as "
         "\"25%\""),
        ("doc 0: spec.vertices[2].sideInputs[0]: vertex 'out' uses side input 'rules', which is "
         "not defined in spec.sideInputs; define it or remove it from the vertex")]


def test_idle_source_rules() -> None:
    m = valid()
    m["spec"]["watermark"] = {"idleSource": {"threshold": "1s", "incrementBy": "5s"}}
    assert messages(m) == [
        ("doc 0: spec.watermark.idleSource: watermark.idleSource.threshold '1s' is smaller than "
         "incrementBy '5s'; make threshold >= incrementBy")]


def test_check_documents_accepts_other_kinds() -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "tcp-in"},
               "spec": {"ports": [{"port": 7000}]}}
    assert check_documents([service, valid()]) == []
    nameless = {"apiVersion": "v1", "kind": "Secret", "metadata": {}}
    assert [str(f) for f in check_documents([valid(), nameless])] == [
        "doc 1: metadata.name: metadata.name is None; a Secret needs a name, add one"]


def test_same_name_twice_in_one_file() -> None:
    assert [str(f) for f in check_documents([valid(), copy.deepcopy(valid())])] == [
        ("doc 1: metadata.name: Pipeline 'word-count' is also defined in document 0; a name may "
         "be used once per kind, rename one")]


def test_yaml_text_multi_document_numbering_and_syntax_error() -> None:
    text = "---\n" + yaml.safe_dump(valid()) + "---\n" + "kind: [unclosed\n"
    findings = check_yaml_text(text)
    assert len(findings) == 1
    assert findings[0].document == 1
    assert findings[0].message.startswith("the file is not valid YAML: ")


def test_empty_file_and_missing_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    assert [str(f) for f in check_file(empty)] == [
        "doc 0: the file holds no YAML document; expected at least one Pipeline"]
    found = check_file(tmp_path / "nope.yaml")
    assert len(found) == 1 and found[0].message.startswith("cannot read ")


def test_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump_all([valid(), {"apiVersion": "v1", "kind": "Service",
                                                  "metadata": {"name": "s"}}]))
    assert check_file(path) == []


def test_int_or_string() -> None:
    m = valid()
    m["spec"]["vertices"][2]["updateStrategy"] = {"rollingUpdate": {"maxUnavailable": 1.5}}
    assert messages(m) == [
        ("doc 0: spec.vertices[2].updateStrategy.rollingUpdate.maxUnavailable: value 1.5 must be "
         "an integer or a string (Numaflow v1.8.3 Pipeline CRD schema); write a number or a quoted "
         "string such as \"25%\" or \"1Gi\"")]


def test_required_field_from_schema() -> None:
    m = valid()
    m["spec"]["edges"][0] = {"from": "in"}
    assert messages(m)[0] == (
        "doc 0: spec.edges[0]: 'to' is a required property (Numaflow v1.8.3 Pipeline CRD "
        "schema); add it")


def test_label_values_must_be_strings() -> None:
    m = valid()
    m["metadata"]["labels"] = {"app": "wc", "replicas": 3}
    assert messages(m) == [
        ("doc 0: metadata.labels.replicas: metadata.labels entry 'replicas': 3 is not a string; "
         "quote the value (e.g. \"true\", \"1\") so YAML keeps it a string")]


def test_invalid_idle_duration_is_reported_once() -> None:
    m = valid()
    m["spec"]["watermark"] = {"idleSource": {"threshold": "5 s", "incrementBy": "1s"}}
    assert messages(m) == [
        ("doc 0: spec.watermark.idleSource.threshold: idleSource.threshold '5 s' is not a Go "
         "duration (such as \"60s\", \"500ms\", \"1h30m\"); the controller cannot decode it; "
         "write numbers with units ns, us, ms, s, m or h")]


def _nodes(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a nested dict/list, for mutation."""
    found = [path] if path else []
    if isinstance(value, dict):
        for k, v in value.items():
            found += _nodes(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _nodes(v, (*path, i))
    return found


def test_never_raises_on_malformed_input() -> None:
    # Replace every node of a valid manifest by values of the wrong shape: the checker must report,
    # never raise.
    weird: list[Any] = [None, 7, "x", [], {}, True, [None], {"k": None}, -1, 2**40]
    for path in _nodes(valid()):
        for value in weird:
            m = valid()
            node: Any = m
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = value
            findings = check_pipeline(m)
            assert all(isinstance(f, Finding) for f in findings)
            if value is None:
                assert any(f.message.startswith("null value at ") for f in findings), path
    for value in weird:
        assert check_pipeline(value)  # type: ignore[arg-type]
        assert check_documents([value, valid()])


def test_recursive_alias_is_a_finding_not_a_crash() -> None:
    text = ("apiVersion: numaflow.numaproj.io/v1alpha1\nkind: Pipeline\nmetadata: {name: p}\n"
            "spec: &s {vertices: [], loop: *s}\n")
    assert [str(f) for f in check_yaml_text(text)] == [
        ("doc 0: the document refers to itself through a YAML alias (&anchor ... *anchor); a "
         "Kubernetes object cannot be recursive, write the values out")]


def test_sqs_account_id_and_source_partitions() -> None:
    m = valid()
    m["spec"]["vertices"][0]["partitions"] = 2
    m["spec"]["vertices"][2]["sink"] = {"sqs": {
        "awsRegion": "eu-west-1", "queueName": "q", "queueOwnerAWSAccountID": "12345"}}
    assert messages(m) == [
        ("doc 0: spec.vertices[0].partitions: source vertex 'in' sets partitions: 2; a source "
         "must have at most 1, remove it"),
        ("doc 0: spec.vertices[2].sink.sqs.queueOwnerAWSAccountID: queueOwnerAWSAccountID "
         "'12345' of vertex 'out' is not 12 digits; write the 12-digit AWS account id")]
