"""The plan: which Numaflow vertices an application becomes and how they connect.

The plan knows Numaflow's concepts (vertex kinds, partitions, ordered processing, tags) but emits
no YAML. ``emit`` turns it into manifests; ``runtime`` and ``local`` read it to know what a vertex
process does.
"""

from __future__ import annotations

import attrs

from nfbuilder.topology import Application

SOURCE, MAP, SINK = "source", "map", "sink"
# What runs in the vertex's user container (None: a Numaflow built-in, no container of ours).
CONTAINER_FOR_ROLE = {
    "udsource": "source",
    "kafka": None,
    "udf": "map",
    "udsink": "sink",
    "blackhole": None,
}

#: user-metadata group and key that carry a message's pipeline index between vertices
META_GROUP, META_PIPELINE = "nfbuilder", "pipeline"


@attrs.frozen
class PlanOptions:
    """Choices made at compile/run time; everything that changes the vertex structure lives here.

    ``PlanOptions(partitions=4, fuse=True)``
    """

    image: str = "nfbuilder-app:latest"
    namespace: str | None = None
    partitions: int = attrs.field(default=2, validator=attrs.validators.ge(1))
    max_replicas: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    fuse: bool = False
    state_store: str | None = None
    state_store_secret: str | None = None  # "secret-name:key" holding the store URL


@attrs.frozen
class Work:
    """What a vertex does to messages of one pipeline, in order: decode (sources), the steps,
    key the outputs for the next state vertex, encode (sinks), tag the outputs for routing."""

    pipeline: int
    decode: bool = False
    steps: tuple[int, ...] = ()
    encode: int | None = None
    key_by: int | None = None
    tag: str | None = None
    emit: bool = True


@attrs.frozen
class Vertex:
    name: str
    kind: str  # SOURCE | MAP | SINK
    role: str  # udsource | kafka | udf | udsink | blackhole
    works: tuple[Work, ...]
    state: str | None = None
    partitions: int = 1
    ordered: bool = False
    max_replicas: int = 1  # >1: autoscaled (to_parallel); ordered vertices ignore it

    @property
    def container(self) -> str | None:
        """Which servicer our container runs: source | sourcetransformer | map | sink | None."""
        if self.kind == SOURCE and self.role == "kafka":
            return "sourcetransformer"
        return CONTAINER_FOR_ROLE[self.role]

    @property
    def pipelines(self) -> tuple[int, ...]:
        return tuple(w.pipeline for w in self.works)

    def work_for(self, pipeline: int) -> Work:
        for work in self.works:
            if work.pipeline == pipeline:
                return work
        raise KeyError(f"vertex {self.name!r} serves no pipeline {pipeline}")


@attrs.frozen
class Edge:
    src: str
    dst: str
    tags: tuple[str, ...] = ()  # empty: unconditional


@attrs.frozen
class PipelineDoc:
    """One Numaflow ``Pipeline`` object: a connected set of vertices."""

    name: str
    vertices: tuple[Vertex, ...]
    edges: tuple[Edge, ...]
    pipelines: tuple[int, ...]

    def vertex(self, name: str) -> Vertex:
        for vertex in self.vertices:
            if vertex.name == name:
                return vertex
        raise KeyError(name)


@attrs.frozen
class VertexGraph:
    app: Application = attrs.field(eq=False)
    options: PlanOptions
    docs: tuple[PipelineDoc, ...]

    def vertices(self) -> tuple[Vertex, ...]:
        return tuple(v for doc in self.docs for v in doc.vertices)

    def find(self, vertex: str, doc: str | None = None) -> tuple[PipelineDoc, Vertex]:
        """The vertex named ``vertex`` (in document ``doc`` when names repeat across documents)."""
        for d in self.docs:
            if doc is not None and d.name != doc:
                continue
            for v in d.vertices:
                if v.name == vertex:
                    return d, v
        known = ", ".join(v.name for v in self.vertices())
        raise KeyError(f"no vertex named {vertex!r}; the plan has: {known}")

    def describe(self) -> list[str]:
        """One line per vertex: what it is and what it runs."""
        lines = []
        for doc in self.docs:
            for v in doc.vertices:
                lines.append(f"{doc.name}/{v.name}: {_summary(self.app, v)}")
        return lines


def _summary(app: Application, v: Vertex) -> str:
    parts: list[str] = []
    for w in v.works:
        p = app.pipelines[w.pipeline]
        bits: list[str] = []
        if w.decode:
            bits.append(f"{p.source.kind} source")
        bits += [repr(p.steps[i].name) for i in w.steps]
        if w.encode is not None:
            bits.append(f"{p.sinks[w.encode].kind} sink")
        parts.append(f"[{p.name}] " + " -> ".join(bits or ["(built-in)"]))
    extra = ""
    if v.state:
        extra = f"; state {v.state!r}, {v.partitions} partition(s), ordered"
    elif v.kind == MAP:
        extra = f"; autoscaled to {v.max_replicas:d}" if v.max_replicas > 1 else "; 1 replica"
    return f"{v.kind}/{v.role} " + "; ".join(parts) + extra
