"""Graph rules of the Numaflow controller for a Pipeline: edges, degrees, connectivity, cycles.

    >>> g = Graph.from_spec({"vertices": [{"name": "a", "source": {"http": {}}}], "edges": []})
    >>> check_graph(g)[0]
    ('spec.vertices[0]', "source vertex 'a' has no outgoing edge; ...")
"""

from __future__ import annotations

from typing import Any

import attrs

from nfbuilder.emit.manifest_schema import Issue


@attrs.frozen
class Edge:
    """One well-typed entry of ``spec.edges`` and its index in that list."""

    index: int
    src: str
    dst: str
    body: dict[str, Any]


@attrs.frozen
class Graph:
    """The vertices (name -> index, kind) and edges of a Pipeline spec, for the graph rules.

    ``kinds`` maps a vertex name to "source", "map", "reduce" or "sink", or to "" when the vertex
    does not set exactly one of source/udf/sink (reported elsewhere).
    """

    index: dict[str, int]
    kinds: dict[str, str]
    ordered: frozenset[str]
    edges: tuple[Edge, ...]

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Graph:
        """Build from a spec dict, skipping entries of the wrong type (the schema reports them)."""
        vertices = spec.get("vertices") if isinstance(spec.get("vertices"), list) else []
        default_ordered = _enabled(spec.get("ordered"))
        index: dict[str, int] = {}
        kinds: dict[str, str] = {}
        ordered: set[str] = set()
        for i, v in enumerate(vertices or []):
            name = v.get("name") if isinstance(v, dict) else None
            if not isinstance(name, str) or name in index:
                continue
            index[name] = i
            kinds[name] = _kind(v)
            own = v.get("ordered")
            is_ordered = _enabled(own) if isinstance(own, dict) and "enabled" in own \
                else default_ordered
            if is_ordered and kinds[name] in ("map", "sink"):
                ordered.add(name)
        raw = spec.get("edges") if isinstance(spec.get("edges"), list) else []
        edges = tuple(Edge(i, e["from"], e["to"], e) for i, e in enumerate(raw or [])
                      if isinstance(e, dict) and isinstance(e.get("from"), str)
                      and isinstance(e.get("to"), str))
        return cls(index, kinds, frozenset(ordered), edges)

    def is_ordered(self, name: str) -> bool:
        """Whether ``name`` is an ordered map or sink vertex (vertex.ordered or spec.ordered)."""
        return name in self.ordered


def _enabled(block: Any) -> bool:
    return isinstance(block, dict) and block.get("enabled") is True


def _kind(v: dict[str, Any]) -> str:
    present = [k for k in ("source", "udf", "sink") if k in v]
    if len(present) != 1:
        return ""
    if present == ["udf"]:
        udf = v.get("udf")
        return "reduce" if isinstance(udf, dict) and "groupBy" in udf else "map"
    return present[0]


def _edge_name(e: Edge) -> str:
    return f"{e.src!r} -> {e.dst!r}"


def check_graph(g: Graph) -> list[Issue]:
    """Apply the edge and graph rules; returns ``(path, message)`` issues."""
    issues: list[Issue] = []
    issues.extend(_check_edges(g))
    issues.extend(_check_degrees(g))
    issues.extend(_check_shape(g))
    issues.extend(_check_reduce_after_cycle(g))
    return issues


def _check_edges(g: Graph) -> list[Issue]:
    issues: list[Issue] = []
    known = ", ".join(g.index) or "none"
    by_key: dict[str, Edge] = {}
    for e in g.edges:
        path = f"spec.edges[{e.index}]"
        for end in dict.fromkeys((e.src, e.dst)):
            if end not in g.index:
                msg = (f"edge {_edge_name(e)} refers to vertex {end!r}, which is not in "
                       f"spec.vertices (known: {known}); add the vertex or fix the name")
                issues.append((path, msg))
        # The controller keys edges by from+to with no separator, so 'a'->'bc' and 'ab'->'c' clash.
        key = e.src + e.dst
        first = by_key.setdefault(key, e)
        if first is not e and (first.src, first.dst) == (e.src, e.dst):
            msg = (f"edge {_edge_name(e)} duplicates spec.edges[{first.index}]; keep one edge "
                   "per (from, to) pair")
            issues.append((path, msg))
        elif first is not e:
            msg = (f"edge {_edge_name(e)} collides with spec.edges[{first.index}] "
                   f"{_edge_name(first)}: the controller identifies an edge by from+to joined "
                   f"without a separator ({key!r}) and rejects the pair; rename one of the "
                   "vertices")
            issues.append((path, msg))
        conditions = e.body.get("conditions")
        tags = conditions.get("tags") if isinstance(conditions, dict) else None
        if isinstance(tags, dict) and isinstance(tags.get("values"), list) and not tags["values"]:
            msg = (f"edge {_edge_name(e)} has conditions.tags with no values; list at least one "
                   "tag, or remove conditions to forward every message")
            issues.append((f"{path}.conditions.tags.values", msg))
    return issues


def _check_degrees(g: Graph) -> list[Issue]:
    issues: list[Issue] = []
    ins: dict[str, int] = {name: 0 for name in g.index}
    outs: dict[str, int] = {name: 0 for name in g.index}
    for e in g.edges:
        if e.src in outs:
            outs[e.src] += 1
        if e.dst in ins:
            ins[e.dst] += 1
        if g.kinds.get(e.dst) == "source":
            msg = (f"source vertex {e.dst!r} has an incoming edge from {e.src!r}; a source cannot "
                   "receive messages, remove the edge or point it at a map or sink vertex")
            issues.append((f"spec.edges[{e.index}]", msg))
        if g.kinds.get(e.src) == "sink":
            msg = (f"sink vertex {e.src!r} has an outgoing edge to {e.dst!r}; a sink cannot send "
                   "messages, remove the edge")
            issues.append((f"spec.edges[{e.index}]", msg))
    for name, i in g.index.items():
        kind, path = g.kinds[name], f"spec.vertices[{i}]"
        if kind in ("map", "reduce", "sink") and ins[name] == 0:
            msg = (f"{kind} vertex {name!r} has no incoming edge; add an edge into it from a "
                   "source or map vertex")
            issues.append((path, msg))
        if kind in ("source", "map", "reduce") and outs[name] == 0:
            msg = (f"{kind} vertex {name!r} has no outgoing edge; add an edge from it to a map or "
                   "sink vertex")
            issues.append((path, msg))
    return issues


def _check_shape(g: Graph) -> list[Issue]:
    issues: list[Issue] = []
    kinds = set(g.kinds.values())
    for kind in ("source", "sink"):
        if kind not in kinds:
            issues.append(("spec.vertices", f"the pipeline has no {kind} vertex; add at least one"))
    linked = {e.src for e in g.edges} | {e.dst for e in g.edges}
    lonely = [name for name in g.index if name not in linked]
    for name in lonely:
        msg = f"vertex {name!r} is not in any edge; connect it or remove it"
        issues.append((f"spec.vertices[{g.index[name]}]", msg))
    components = _components(g)
    if not lonely and len(components) > 1:
        shown = "; ".join("{" + ", ".join(sorted(c)) + "}" for c in components)
        msg = (f"the pipeline graph is not connected: its parts {shown} share no edge; Numaflow "
               "rejects disjoint pipelines, connect them or emit each part as its own Pipeline")
        issues.append(("spec.edges", msg))
    return issues


def _components(g: Graph) -> list[set[str]]:
    """Connected components of the vertex graph with edges taken as undirected."""
    neighbours: dict[str, set[str]] = {name: set() for name in g.index}
    for e in g.edges:
        if e.src in neighbours and e.dst in neighbours:
            neighbours[e.src].add(e.dst)
            neighbours[e.dst].add(e.src)
    left, parts = dict.fromkeys(g.index), []
    while left:
        start = next(iter(left))
        part, todo = {start}, [start]
        while todo:
            for nxt in neighbours[todo.pop()] - part:
                part.add(nxt)
                todo.append(nxt)
        parts.append(part)
        for name in part:
            left.pop(name)
    return parts


def _reachable(g: Graph, start: str) -> set[str]:
    """Vertices reachable from ``start`` in one or more steps."""
    succ: dict[str, list[str]] = {}
    for e in g.edges:
        succ.setdefault(e.src, []).append(e.dst)
    seen: set[str] = set()
    todo = list(succ.get(start, []))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(succ.get(name, []))
    return seen


def _check_reduce_after_cycle(g: Graph) -> list[Issue]:
    reduces = {n for n, k in g.kinds.items() if k == "reduce"}
    if not reduces:
        return []
    issues: list[Issue] = []
    flagged: set[str] = set()
    for name in g.index:
        after = _reachable(g, name)
        if name not in after:
            continue  # not on a cycle
        for bad in sorted((after & reduces) - flagged):
            flagged.add(bad)
            msg = (f"reduce vertex {bad!r} is at or downstream of a cycle through {name!r}; cycles "
                   "create late data, so Numaflow rejects this; move the reduce before the cycle "
                   "or remove the cycle")
            issues.append((f"spec.vertices[{g.index[bad]}]", msg))
    return issues
