"""Draw a plan: Mermaid flowchart (default) or Graphviz dot.

``print(render(graph, "mermaid"))``
"""

from __future__ import annotations

from nfbuilder.plan import MAP, SINK, SOURCE, Vertex, VertexGraph
from nfbuilder.topology import TcpSink, TcpSource


def _label(graph: VertexGraph, v: Vertex) -> list[str]:
    lines = [v.name]
    for w in v.works:
        p = graph.app.pipelines[w.pipeline]
        if w.decode:
            src = p.source
            where = f"{src.host}:{src.port}" if isinstance(src, TcpSource) else f"topic {src.topic}"
            lines.append(f"{src.kind} source {where}")
        lines += [p.steps[i].name for i in w.steps]
        if w.encode is not None:
            sink = p.sinks[w.encode]
            where = (
                f"{sink.host}:{sink.port}" if isinstance(sink, TcpSink) else f"topic {sink.topic}"
            )
            lines.append(f"{sink.kind} sink {where}" if v.kind == SINK else f"encode for {where}")
    if v.kind == SINK and v.role in ("kafka", "blackhole"):
        lines.append(f"built-in {v.role} sink")
    if v.state:
        lines.append(f"state {v.state!r}, {v.partitions} partition(s)")
    elif v.kind == MAP and v.max_replicas > 1:
        lines.append(f"parallel, up to {v.max_replicas}")
    return lines


def _id(doc: str, name: str) -> str:
    return f"{doc}__{name}".replace("-", "_")


def mermaid(graph: VertexGraph) -> str:
    out = ["flowchart LR"]
    for doc in graph.docs:
        out.append(f'  subgraph {_id(doc.name, "")}["Pipeline {doc.name}"]')
        for v in doc.vertices:
            text = "<br/>".join(s.replace('"', "'") for s in _label(graph, v))
            left, right = {SOURCE: ("[/", "/]"), SINK: ("[\\", "/]")}.get(v.kind, ("[", "]"))
            if v.state:
                left, right = "[(", ")]"
            out.append(f'    {_id(doc.name, v.name)}{left}"{text}"{right}')
        out.append("  end")
        for e in doc.edges:
            arrow = f"-->|{' or '.join(e.tags)}|" if e.tags else "-->"
            out.append(f"  {_id(doc.name, e.src)} {arrow} {_id(doc.name, e.dst)}")
    return "\n".join(out) + "\n"


def dot(graph: VertexGraph) -> str:
    out = ["digraph nfbuilder {", "  rankdir=LR;", "  node [fontname=Helvetica];"]
    for doc in graph.docs:
        out.append(f'  subgraph "cluster_{doc.name}" {{')
        out.append(f'    label="Pipeline {doc.name}";')
        for v in doc.vertices:
            shape = {SOURCE: "invhouse", SINK: "house"}.get(v.kind, "box")
            if v.state:
                shape = "cylinder"
            text = "\\n".join(s.replace('"', "'") for s in _label(graph, v))
            out.append(f'    "{_id(doc.name, v.name)}" [shape={shape}, label="{text}"];')
        out.append("  }")
        for e in doc.edges:
            attr = f' [label="{" or ".join(e.tags)}"]' if e.tags else ""
            out.append(f'  "{_id(doc.name, e.src)}" -> "{_id(doc.name, e.dst)}"{attr};')
    out.append("}")
    return "\n".join(out) + "\n"


def render(graph: VertexGraph, fmt: str = "mermaid") -> str:
    if fmt == "mermaid":
        return mermaid(graph)
    if fmt == "dot":
        return dot(graph)
    raise ValueError(f"unknown graph format {fmt!r}; use 'mermaid' or 'dot'")
