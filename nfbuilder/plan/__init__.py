"""Application -> VertexGraph (vertices, edges, tags, keys, partitions, names, fusion)."""

from nfbuilder.plan.graph import (
    MAP,
    META_GROUP,
    META_PIPELINE,
    SINK,
    SOURCE,
    Edge,
    PipelineDoc,
    PlanOptions,
    Vertex,
    VertexGraph,
    Work,
)
from nfbuilder.plan.planner import plan

__all__ = [
    "MAP",
    "META_GROUP",
    "META_PIPELINE",
    "SINK",
    "SOURCE",
    "Edge",
    "PipelineDoc",
    "PlanOptions",
    "Vertex",
    "VertexGraph",
    "Work",
    "plan",
]
