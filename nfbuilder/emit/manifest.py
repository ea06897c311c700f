"""VertexGraph -> Kubernetes objects (Numaflow ``Pipeline`` dicts, ``Service`` for TCP sources).

::

    docs = emit(graph, AppRef("word_count", ("--in", "0.0.0.0:7010", "--out", "sink:7002")))
    text = dump_yaml(docs)

Deterministic: same graph, same bytes. Only fields of the v1.8.3 CRD are emitted, with ``{}`` for
empty objects and no nulls.
"""

from __future__ import annotations

from typing import Any

import attrs
import yaml

from nfbuilder.plan import MAP, SINK, SOURCE, PipelineDoc, Vertex, VertexGraph
from nfbuilder.topology import KafkaSink, KafkaSource, TcpSource

API_VERSION = "numaflow.numaproj.io/v1alpha1"
MANAGED_BY = {"app.kubernetes.io/managed-by": "nfbuilder"}
STATE_STORE_ENV = "NFBUILDER_STATE_STORE"
BIND_HOST_ENV = "NFBUILDER_TCP_BIND_HOST"


@attrs.frozen
class AppRef:
    """How a container imports the app: the module name and ``application_setup``'s args."""

    module: str
    args: tuple[str, ...] = ()


def serve_command(app: AppRef, vertex: str, fuse: bool = False) -> list[str]:
    """The container command of a vertex (what ``nfbuilder run`` starts locally, too)."""
    cmd = ["python", "-m", "nfbuilder", "serve", "--app", app.module, "--vertex", vertex]
    if fuse:
        cmd.append("--fuse")
    return [*cmd, "--", *app.args]


def emit(graph: VertexGraph, app: AppRef) -> list[dict[str, Any]]:
    """All objects for ``graph``: one ``Pipeline`` per document, then Services."""
    objects: list[dict[str, Any]] = []
    services: list[dict[str, Any]] = []
    for doc in graph.docs:
        objects.append(_pipeline(graph, doc, app))
        services += _services(graph, doc)
    return objects + services


def _metadata(graph: VertexGraph, name: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if graph.options.namespace:
        meta["namespace"] = graph.options.namespace
    meta["labels"] = {"app.kubernetes.io/name": name, **MANAGED_BY}
    return meta


def _pipeline(graph: VertexGraph, doc: PipelineDoc, app: AppRef) -> dict[str, Any]:
    edges = []
    for e in doc.edges:
        edge: dict[str, Any] = {"from": e.src, "to": e.dst}
        if e.tags:
            edge["conditions"] = {"tags": {"operator": "or", "values": list(e.tags)}}
        edges.append(edge)
    meta = _metadata(graph, doc.name)
    meta["annotations"] = {"nfbuilder.io/application": graph.app.name}
    return {
        "apiVersion": API_VERSION,
        "kind": "Pipeline",
        "metadata": meta,
        "spec": {
            "vertices": [_vertex(graph, doc, v, app) for v in doc.vertices],
            "edges": edges,
        },
    }


def _container(graph: VertexGraph, v: Vertex, app: AppRef) -> dict[str, Any]:
    env: list[dict[str, Any]] = [{"name": "PYTHONUNBUFFERED", "value": "1"}]
    if v.kind == SOURCE and v.role == "udsource":
        env.append({"name": BIND_HOST_ENV, "value": "0.0.0.0"})
    if v.state is not None:
        env.append(_state_env(graph))
    command = serve_command(app, v.name, graph.options.fuse)
    return {
        "image": graph.options.image,
        "command": command[:4],
        "args": command[4:],
        "env": env,
    }


def _state_env(graph: VertexGraph) -> dict[str, Any]:
    opts = graph.options
    if opts.state_store_secret:
        name, _, key = opts.state_store_secret.partition(":")
        ref = {"name": name, "key": key or "url"}
        return {"name": STATE_STORE_ENV, "valueFrom": {"secretKeyRef": ref}}
    return {"name": STATE_STORE_ENV, "value": opts.state_store or "memory://"}


def _vertex(graph: VertexGraph, doc: PipelineDoc, v: Vertex, app: AppRef) -> dict[str, Any]:
    out: dict[str, Any] = {"name": v.name}
    pipeline = graph.app.pipelines[v.works[0].pipeline]
    if v.kind == SOURCE:
        source = pipeline.source
        if isinstance(source, KafkaSource):
            out["source"] = {
                "kafka": {
                    "brokers": [f"{h}:{p}" for h, p in source.brokers],
                    "topic": source.topic,
                    "consumerGroup": f"{doc.name}-{v.name}",
                },
                "transformer": {"container": _container(graph, v, app)},
            }
        else:
            out["source"] = {"udsource": {"container": _container(graph, v, app)}}
        out["scale"] = {"min": 1, "max": 1}
    elif v.kind == MAP:
        out["udf"] = {"container": _container(graph, v, app)}
        if v.ordered:
            out["partitions"] = v.partitions
            out["ordered"] = {"enabled": True}
        else:
            out["scale"] = {"min": 1, "max": v.max_replicas}
    elif v.kind == SINK:
        if v.role == "udsink":
            out["sink"] = {"udsink": {"container": _container(graph, v, app)}}
        elif v.role == "kafka":
            sink = pipeline.sinks[_kafka_sink_index(doc, v)]
            assert isinstance(sink, KafkaSink)
            kafka: dict[str, Any] = {
                "brokers": [f"{h}:{p}" for h, p in sink.brokers],
                "topic": sink.topic,
                "setKey": True,
            }
            lines = [f"message.max.bytes: {sink.max_message_size}"]
            if sink.max_produce_buffer_ms:
                lines.insert(0, f"linger.ms: {sink.max_produce_buffer_ms}")
            kafka["config"] = "\n".join(lines) + "\n"
            out["sink"] = {"kafka": kafka}
        else:
            out["sink"] = {"blackhole": {}}
        out["scale"] = {"min": 1, "max": 1}
    return out


def _kafka_sink_index(doc: PipelineDoc, v: Vertex) -> int:
    """The pipeline sink index of a built-in kafka sink: the one its encoder vertex encodes."""
    feeding = [e.src for e in doc.edges if e.dst == v.name]
    encoder = doc.vertex(feeding[0])
    index = encoder.works[0].encode
    assert index is not None
    return index


def _services(graph: VertexGraph, doc: PipelineDoc) -> list[dict[str, Any]]:
    """A ClusterIP Service per TCP source, so senders reach the source pod on its port."""
    out = []
    for v in doc.vertices:
        if v.kind != SOURCE or v.role != "udsource":
            continue
        source = graph.app.pipelines[v.works[0].pipeline].source
        assert isinstance(source, TcpSource)
        port = int(source.port)
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": _metadata(graph, f"{doc.name}-{v.name}-tcp"),
                "spec": {
                    "selector": {
                        "numaflow.numaproj.io/pipeline-name": doc.name,
                        "numaflow.numaproj.io/vertex-name": v.name,
                    },
                    "ports": [{"name": "tcp", "port": port, "targetPort": port, "protocol": "TCP"}],
                },
            }
        )
    return out


class _Dumper(yaml.SafeDumper):
    """Block style, no aliases, multi-line strings as literal blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_yaml(objects: list[dict[str, Any]]) -> str:
    """Multi-document YAML, keys in emission order, deterministic."""
    return yaml.dump_all(
        objects, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100,
        explicit_start=True,
    )
