"""``plan(app, options)``: lower an ``Application`` to Numaflow vertices and edges.

::

    graph = plan(from_actions(application_setup(args)), PlanOptions())
    [v.name for v in graph.vertices()]   # ['reverse-source', 'reverse', 'reverse-sink']

One vertex per step by default (``to`` serial, ``to_parallel`` autoscaled, state steps ordered
and partitioned, one vertex per state name shared by every pipeline using it); ``fuse`` coalesces
runs of stateless steps, and the leading run into the source. Pipelines that share no state are
separate ``Pipeline`` documents, since Numaflow rejects disconnected graphs.
"""

from __future__ import annotations

from collections import defaultdict

import attrs

from nfbuilder.plan.graph import (
    MAP,
    SINK,
    SOURCE,
    Edge,
    PipelineDoc,
    PlanOptions,
    Vertex,
    VertexGraph,
    Work,
)
from nfbuilder.plan.names import MAX_PIPELINE_NAME, NameBook, shorten, slug
from nfbuilder.topology import Application, Pipeline


def plan(app: Application, options: PlanOptions | None = None) -> VertexGraph:
    """The vertex graph of ``app`` (deterministic: same input, same output)."""
    options = options or PlanOptions()
    groups = _connected_groups(app)
    app_slug = slug(app.name, "app")
    doc_names = []
    for group in groups:
        if len(groups) == 1:
            doc_name = shorten(app_slug, MAX_PIPELINE_NAME)
        else:
            first = app.pipelines[group[0]].name
            doc_name = shorten(f"{app_slug}-{slug(first, 'p')}", MAX_PIPELINE_NAME)
        doc_names.append(doc_name)
    # One name book for the whole app: vertex names are unique across documents, so a container
    # finds its vertex by name alone.
    names = NameBook(max(doc_names, key=len))
    multi = len(app.pipelines) > 1
    docs = [
        _plan_doc(app, [app.pipelines[i] for i in group], name, options, names, multi)
        for group, name in zip(groups, doc_names, strict=True)
    ]
    return VertexGraph(app, options, tuple(docs))


def _connected_groups(app: Application) -> list[list[int]]:
    """Pipelines joined by shared state names, in declaration order."""
    parent = list(range(len(app.pipelines)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for p in app.pipelines:
        for step in p.steps:
            if step.state is None:
                continue
            if step.state.name in owner:
                a, b = find(owner[step.state.name]), find(p.index)
                parent[max(a, b)] = min(a, b)
            else:
                owner[step.state.name] = p.index
    groups: dict[int, list[int]] = defaultdict(list)
    for p in app.pipelines:
        groups[find(p.index)].append(p.index)
    return sorted(groups.values())


@attrs.define
class _Node:
    """A vertex under construction."""

    name: str
    kind: str
    role: str
    works: list[Work]
    state: str | None = None
    partitions: int = 1
    max_replicas: int = 1


def _plan_doc(
    app: Application,
    pipelines: list[Pipeline],
    doc_name: str,
    options: PlanOptions,
    names: NameBook,
    multi: bool,
) -> PipelineDoc:
    nodes: dict[str, _Node] = {}
    state_nodes: dict[str, str] = {}
    chains: dict[int, list[str]] = {}  # pipeline -> vertex names, source first, before sinks
    sink_names: dict[int, list[str]] = {}
    kafka_out: dict[str, str] = {}  # kafka encoder vertex -> its built-in sink vertex

    for p in pipelines:
        prefix = slug(p.name, "p") if multi else ""
        runs = _runs(p, options.fuse)
        chain: list[str] = []
        src = names.take(_role_name(p, "source", multi))
        lead: tuple[int, ...] = ()
        # The source has one replica: a run with a to_parallel step keeps its own vertex.
        if options.fuse and runs and not any(
            p.steps[i].stateful or p.steps[i].parallel for i in runs[0]
        ):
            lead = runs.pop(0)
        nodes[src] = _Node(src, SOURCE, p.source.kind == "tcp" and "udsource" or "kafka",
                           [Work(p.index, decode=True, steps=lead)])
        chain.append(src)
        for run in runs:
            first = p.steps[run[0]]
            if first.state is not None:
                name = state_nodes.get(first.state.name)
                if name is None:
                    name = state_nodes[first.state.name] = names.take(first.state.name, prefix)
                    parts = options.partitions if first.state.partitioned else 1
                    nodes[name] = _Node(
                        name, MAP, "udf", [], state=first.state.name, partitions=parts
                    )
                nodes[name].works.append(Work(p.index, steps=run))
            else:
                label = first.name if len(run) == 1 else f"{first.name}-to-{p.steps[run[-1]].name}"
                name = names.take(label, prefix)
                parallel = any(p.steps[i].parallel for i in run)
                nodes[name] = _Node(name, MAP, "udf", [Work(p.index, steps=run)],
                                    max_replicas=options.max_replicas if parallel else 1)
            chain.append(name)
        chains[p.index] = chain
        sink_names[p.index] = []
        for i, sink in enumerate(p.sinks):
            suffix = "" if i == 0 else f"-{i + 1}"
            if sink.kind == "kafka":
                enc = names.take(_role_name(p, "encode", multi) + suffix)
                nodes[enc] = _Node(enc, MAP, "udf", [Work(p.index, encode=i)])
                out = names.take(_role_name(p, "sink", multi) + suffix)
                nodes[out] = _Node(out, SINK, "kafka", [Work(p.index)])
                kafka_out[enc] = out
                sink_names[p.index].append(enc)
            else:
                out = names.take(_role_name(p, "sink", multi) + suffix)
                nodes[out] = _Node(out, SINK, "udsink", [Work(p.index, encode=i)])
                sink_names[p.index].append(out)

    # Edges: each pipeline's chain, then its sinks (kafka: encoder -> built-in sink).
    hops: dict[tuple[str, str], set[int]] = defaultdict(set)
    order: list[tuple[str, str]] = []

    def hop(a: str, b: str, pipeline: int) -> None:
        if (a, b) not in hops:
            order.append((a, b))
        hops[(a, b)].add(pipeline)

    ended: set[int] = set()
    for p in pipelines:
        chain = chains[p.index]
        for a, b in zip(chain, chain[1:], strict=False):  # consecutive pairs
            hop(a, b, p.index)
        for s in sink_names[p.index]:
            hop(chain[-1], s, p.index)
            if s in kafka_out:
                hop(s, kafka_out[s], p.index)
        if not p.sinks:
            ended.add(p.index)
    # A done() pipeline whose last vertex would have no way out gets a blackhole sink.
    for p in pipelines:
        last = chains[p.index][-1]
        if p.index in ended and not any(a == last for a, _ in order):
            hole = names.take(_role_name(p, "end", multi))
            nodes[hole] = _Node(hole, SINK, "blackhole", [Work(p.index)])
            hop(last, hole, p.index)

    edges = []
    for a, b in order:
        served = {w.pipeline for w in nodes[a].works}
        taken = hops[(a, b)]
        outs_for = {pi for (x, _), ps in hops.items() if x == a for pi in ps}
        conditional = taken != served or outs_for != served
        tags = tuple(sorted(_tag(app.pipelines[i]) for i in taken)) if conditional else ()
        edges.append(Edge(a, b, tags))
    conditional_src = {e.src for e in edges if e.tags}

    vertices = []
    for node in nodes.values():
        works = []
        for w in node.works:
            chain = chains[w.pipeline]
            nxt = _next_in_chain(chain, node.name)
            key_by = None
            if nxt is not None and nodes[nxt].state is not None:
                nxt_work = next(x for x in nodes[nxt].works if x.pipeline == w.pipeline)
                step = app.pipelines[w.pipeline].steps[nxt_work.steps[0]]
                if step.state is not None and step.state.partitioned:
                    key_by = nxt_work.steps[0]
            is_end = node.name == chain[-1] and w.pipeline in ended
            tag = _tag(app.pipelines[w.pipeline]) if node.name in conditional_src else None
            works.append(attrs.evolve(w, key_by=key_by, tag=tag, emit=not is_end))
        ordered = node.state is not None
        vertices.append(
            Vertex(node.name, node.kind, node.role, tuple(works), node.state, node.partitions,
                   ordered, 1 if ordered else node.max_replicas)
        )
    return PipelineDoc(doc_name, tuple(vertices), tuple(edges), tuple(p.index for p in pipelines))


def _next_in_chain(chain: list[str], name: str) -> str | None:
    if name in chain:
        i = chain.index(name)
        return chain[i + 1] if i + 1 < len(chain) else None
    return None


def _role_name(p: Pipeline, role: str, multi: bool) -> str:
    """``source``/``sink``/... alone in a one-pipeline document, else prefixed by the pipeline."""
    return f"{slug(p.name, 'p')}-{role}" if multi else role


def _tag(pipeline: Pipeline) -> str:
    return slug(pipeline.name, "p")


def _runs(p: Pipeline, fuse: bool) -> list[tuple[int, ...]]:
    """Step indices grouped into vertices: state steps alone; stateless ones alone or fused."""
    runs: list[list[int]] = []
    for i, step in enumerate(p.steps):
        if fuse and not step.stateful and runs and not p.steps[runs[-1][-1]].stateful:
            runs[-1].append(i)
        else:
            runs.append([i])
    return [tuple(r) for r in runs]
