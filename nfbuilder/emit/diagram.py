"""Draw a plan: Mermaid flowchart (default) or Graphviz dot.

``print(render(graph, "mermaid"))``
"""

from __future__ import annotations

from typing import TypeVar

from nfbuilder.plan import (
    BlackholeVertex,
    Edge,
    KafkaSinkVertex,
    KafkaSourceVertex,
    LogSinkVertex,
    MapVertex,
    SinkVertex,
    SourceVertex,
    StateVertex,
    TcpSinkVertex,
    TcpSourceVertex,
    UserSourceVertex,
    Vertex,
    VertexGraph,
)
from nfbuilder.plan.graph import sink_address

T = TypeVar("T")


def _label(v: Vertex) -> list[str]:
    lines = [v.name]
    for w in v.works:
        if isinstance(v, TcpSourceVertex):
            lines.append(f"tcp source {v.host}:{v.port}")
        elif isinstance(v, KafkaSourceVertex):
            lines.append(f"kafka source topic {v.topic}")
        elif isinstance(v, UserSourceVertex):
            lines.append("generator source" if v.generated else "user-defined source")
        lines += list(w.step_names)
        for sink in w.sinks:
            where = sink_address(sink)
            lines.append(f"{sink.kind} sink {where}" if isinstance(v, SinkVertex)
                         else f"encode for {where}")
        if isinstance(v, TcpSinkVertex) and w.encoded:
            lines.append(f"tcp sink {v.host}:{v.port}")
    if isinstance(v, KafkaSinkVertex):
        lines.append(f"built-in kafka sink topic {v.topic}")
    elif isinstance(v, BlackholeVertex):
        lines.append("built-in blackhole sink")
    elif isinstance(v, LogSinkVertex):
        lines.append("built-in log sink (dead letters)")
    if isinstance(v, StateVertex):
        lines.append(f"state {v.state_name!r}, {v.partitions} partition(s)")
    elif isinstance(v, MapVertex) and v.max_replicas > 1:
        lines.append(f"parallel, up to {v.max_replicas}")
    return lines


def _shape(v: Vertex, shapes: tuple[T, T, T, T]) -> T:
    """One of ``shapes`` = (source, sink, state, other) for ``v``."""
    if isinstance(v, SourceVertex):
        return shapes[0]
    if isinstance(v, SinkVertex):
        return shapes[1]
    return shapes[2] if isinstance(v, StateVertex) else shapes[3]


def _condition(e: Edge) -> str:
    """An edge's tag condition as text: ``a or b``, ``not dead-letter``."""
    if e.operator == "not":
        return "not " + " or ".join(e.tags)
    return f" {e.operator} ".join(e.tags)


def _id(doc: str, name: str) -> str:
    return f"{doc}__{name}".replace("-", "_")


def mermaid(graph: VertexGraph) -> str:
    out = ["flowchart LR"]
    for doc in graph.docs:
        out.append(f'  subgraph {_id(doc.name, "")}["Pipeline {doc.name}"]')
        for v in doc.vertices:
            text = "<br/>".join(s.replace('"', "'") for s in _label(v))
            left, right = _shape(v, (("[/", "/]"), ("[\\", "/]"), ("[(", ")]"), ("[", "]")))
            out.append(f'    {_id(doc.name, v.name)}{left}"{text}"{right}')
        out.append("  end")
        for e in doc.edges:
            arrow = f"-->|{_condition(e)}|" if e.tags else "-->"
            out.append(f"  {_id(doc.name, e.src)} {arrow} {_id(doc.name, e.dst)}")
    return "\n".join(out) + "\n"


def dot(graph: VertexGraph) -> str:
    out = ["digraph nfbuilder {", "  rankdir=LR;", "  node [fontname=Helvetica];"]
    for doc in graph.docs:
        out.append(f'  subgraph "cluster_{doc.name}" {{')
        out.append(f'    label="Pipeline {doc.name}";')
        for v in doc.vertices:
            shape = _shape(v, ("invhouse", "house", "cylinder", "box"))
            text = "\\n".join(s.replace('"', "'") for s in _label(v))
            out.append(f'    "{_id(doc.name, v.name)}" [shape={shape}, label="{text}"];')
        out.append("  }")
        for e in doc.edges:
            attr = f' [label="{_condition(e)}"]' if e.tags else ""
            out.append(f'  "{_id(doc.name, e.src)}" -> "{_id(doc.name, e.dst)}"{attr};')
    out.append("}")
    return "\n".join(out) + "\n"


def render(graph: VertexGraph, fmt: str = "mermaid") -> str:
    if fmt == "mermaid":
        return mermaid(graph)
    if fmt == "dot":
        return dot(graph)
    raise ValueError(f"unknown graph format {fmt!r}; use 'mermaid' or 'dot'")
