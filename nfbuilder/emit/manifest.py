"""VertexGraph -> Kubernetes objects (Numaflow ``Pipeline`` dicts, ``Service`` for TCP sources).

::

    docs = emit(plan(app, PlanOptions(), AppRef("word_count", ("--in", "0.0.0.0:7010", ...))))
    text = dump_yaml(docs)

A serializer of the plan's vertex specs: every fact (addresses, consumer group, producer
settings, container command and env) was computed by the planner. Deterministic: same graph,
same bytes. Only fields of the v1.8.3 CRD are emitted, with ``{}`` for empty objects and no
nulls.
"""

from __future__ import annotations

from typing import Any

import yaml

from nfbuilder.plan import (
    BlackholeVertex,
    Container,
    KafkaSinkVertex,
    KafkaSourceVertex,
    LogSinkVertex,
    MapVertex,
    PipelineDoc,
    SinkVertex,
    SourceVertex,
    TcpSinkVertex,
    TcpSourceVertex,
    UdSourceVertex,
    Vertex,
    VertexGraph,
)

API_VERSION = "numaflow.numaproj.io/v1alpha1"
MANAGED_BY = {"app.kubernetes.io/managed-by": "nfbuilder"}


def emit(graph: VertexGraph) -> list[dict[str, Any]]:
    """All objects for ``graph``: one ``Pipeline`` per document, then Services."""
    objects: list[dict[str, Any]] = []
    services: list[dict[str, Any]] = []
    for doc in graph.docs:
        objects.append(_pipeline(graph, doc))
        services += _services(graph, doc)
    return objects + services


def _metadata(graph: VertexGraph, name: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if graph.options.namespace:
        meta["namespace"] = graph.options.namespace
    meta["labels"] = {"app.kubernetes.io/name": name, **MANAGED_BY}
    return meta


def _pipeline(graph: VertexGraph, doc: PipelineDoc) -> dict[str, Any]:
    edges = []
    for e in doc.edges:
        edge: dict[str, Any] = {"from": e.src, "to": e.dst}
        if e.tags:
            edge["conditions"] = {"tags": {"operator": e.operator, "values": list(e.tags)}}
        edges.append(edge)
    meta = _metadata(graph, doc.name)
    meta["annotations"] = {"nfbuilder.io/application": graph.app_name,
                           "nfbuilder.io/plan-digest": graph.digest}
    spec: dict[str, Any] = {}
    if graph.options.isbsvc:
        spec["interStepBufferServiceName"] = graph.options.isbsvc
    spec["vertices"] = [_vertex(graph, v) for v in doc.vertices]
    spec["edges"] = edges
    return {"apiVersion": API_VERSION, "kind": "Pipeline", "metadata": meta, "spec": spec}


def _container(graph: VertexGraph, c: Container | None) -> dict[str, Any]:
    assert c is not None, "the planner gives every vertex of ours a container"
    env: list[dict[str, Any]] = []
    for e in c.env:
        if e.secret is not None:
            ref = {"name": e.secret[0], "key": e.secret[1]}
            env.append({"name": e.name, "valueFrom": {"secretKeyRef": ref}})
        else:
            env.append({"name": e.name, "value": e.value})
    return {
        "image": graph.options.image,
        "command": list(c.command[:4]),
        "args": list(c.command[4:]),
        "env": env,
    }


def _vertex(graph: VertexGraph, v: Vertex) -> dict[str, Any]:
    out: dict[str, Any] = {"name": v.name}
    if isinstance(v, KafkaSourceVertex):
        out["source"] = {
            "kafka": {"brokers": list(v.brokers), "topic": v.topic,
                      "consumerGroup": v.consumer_group},
            "transformer": {"container": _container(graph, v.container)},
        }
    elif isinstance(v, UdSourceVertex):
        out["source"] = {"udsource": {"container": _container(graph, v.container)},
                         "transformer": {"container": _container(graph, v.transformer)}}
    elif isinstance(v, MapVertex):
        out["udf"] = {"container": _container(graph, v.container)}
        if v.processes > 1:  # its worker processes each need a core
            out["udf"]["container"]["resources"] = {"requests": {"cpu": str(v.processes)}}
        if v.ordered:
            out["partitions"] = v.partitions
            out["ordered"] = {"enabled": True}
        else:
            out["scale"] = {"min": 1, "max": v.max_replicas}
    elif isinstance(v, TcpSinkVertex):
        out["sink"] = {"udsink": {"container": _container(graph, v.container)}}
    elif isinstance(v, KafkaSinkVertex):
        config = "".join(f"{k}: {value}\n" for k, value in v.producer)
        out["sink"] = {"kafka": {"brokers": list(v.brokers), "topic": v.topic,
                                 "setKey": v.set_key, "config": config}}
    elif isinstance(v, BlackholeVertex):
        out["sink"] = {"blackhole": {}}
    elif isinstance(v, LogSinkVertex):
        out["sink"] = {"log": {}}
    else:
        raise TypeError(f"vertex {v.name!r}: no manifest form for {type(v).__name__}")
    if isinstance(v, SinkVertex) and v.retry is not None:
        out["sink"]["retryStrategy"] = {
            "backoff": {"interval": duration(v.retry.interval_s), "factor": v.retry.factor,
                        "cap": duration(v.retry.cap_s)},
            "onFailure": "retry",
        }
    if isinstance(v, SourceVertex) and v.ordered_writes:
        out["limits"] = {"concurrency": 1}  # numa writes one message at a time, in read order
    if isinstance(v, (SourceVertex, SinkVertex)):
        out["scale"] = {"min": 1, "max": 1}
    return out


def duration(seconds: float) -> str:
    """A Go duration as Numaflow reads it: ``duration(0.05)`` -> ``'50ms'``, ``duration(2)`` ->
    ``'2s'``."""
    if seconds < 1:
        return f"{round(seconds * 1000):d}ms"
    return f"{seconds:g}s"


def _services(graph: VertexGraph, doc: PipelineDoc) -> list[dict[str, Any]]:
    """A ClusterIP Service per TCP source, so senders reach the source pod on its port."""
    out = []
    for v in doc.vertices:
        if not isinstance(v, TcpSourceVertex):
            continue
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": _metadata(graph, v.service),
                "spec": {
                    "selector": {
                        "numaflow.numaproj.io/pipeline-name": doc.name,
                        "numaflow.numaproj.io/vertex-name": v.name,
                    },
                    "ports": [{"name": "tcp", "port": v.port, "targetPort": v.port,
                               "protocol": "TCP"}],
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
