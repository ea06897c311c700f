"""``plan(app, options, ref)``: lower an ``Application`` to complete Numaflow vertex specs.

::

    graph = plan(from_actions(application_setup(args)), PlanOptions(), AppRef("reverse", args))
    [v.name for v in graph.vertices()]   # ['source', 'reverse', 'sink']

One vertex per step by default (``to`` serial, ``to_parallel`` autoscaled, state steps ordered
and partitioned, one vertex per state name shared by every pipeline using it); ``fuse`` coalesces
runs of stateless steps, and the leading run into the source. Pipelines that share no state are
separate ``Pipeline`` documents, since Numaflow rejects disconnected graphs. Routing tags come
from a name book per document, so two pipelines whose names slug alike get distinct tags.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from typing import Any

import attrs

from nfbuilder.plan.graph import (
    BIND_HOST_ENV,
    DIGEST_ENV,
    ID_RETENTION_ENV,
    MAX_FRAME_ENV,
    STATE_KEY_ENV,
    STATE_STORE_ENV,
    AppRef,
    BlackholeVertex,
    Container,
    Edge,
    EnvVar,
    KafkaSinkVertex,
    KafkaSourceVertex,
    LogSinkVertex,
    MapVertex,
    PipelineDoc,
    PlanOptions,
    Retry,
    SourceVertex,
    StateVertex,
    TcpSinkVertex,
    TcpSourceVertex,
    UdSourceVertex,
    UserSourceVertex,
    Vertex,
    VertexGraph,
    Work,
    dead_letter_target,
)
from nfbuilder.plan.names import MAX_PIPELINE_NAME, MAX_TAG, NameBook, shorten, slug
from nfbuilder.plan.routing import DEAD_LETTER
from nfbuilder.topology import DEAD_LETTER as DEAD_LETTER_ACTION
from nfbuilder.topology import (
    Application,
    ErrorPolicy,
    GenSource,
    KafkaSink,
    KafkaSource,
    Pipeline,
    Sink,
    Step,
    UserSource,
)

DEFAULT_RETENTION_S = attrs.fields(PlanOptions).id_retention_s.default

def serve_command(ref: AppRef, vertex: str, fuse: bool = False, *,
                  dead_letters: str = "log", transformer: bool = False,
                  ordered: bool = True) -> tuple[str, ...]:
    """The container command of a vertex (what ``nfbuilder run`` starts locally, too): the plan
    options that change the vertices (``fuse``, ``dead_letters``, ``ordered``), so the container
    plans the app as ``compile`` did; ``transformer``: the TCP source's transformer container."""
    cmd = ["python", "-m", "nfbuilder", "serve", "--app", ref.module, "--vertex", vertex]
    if fuse:
        cmd.append("--fuse")
    if not ordered:
        cmd.append("--unordered")
    if dead_letters != "log":
        cmd += ["--dead-letter-sink", dead_letters]
    if transformer:
        cmd.append("--transformer")
    return (*cmd, "--", *ref.args)


def plan(
    app: Application, options: PlanOptions | None = None, ref: AppRef | None = None
) -> VertexGraph:
    """The vertex graph of ``app`` (deterministic: same input, same output).

    ``ref`` says how a container imports the app (module and ``application_setup`` args); it
    goes into each container's command. Without it the command names a module after the app.
    """
    options = options or PlanOptions()
    ref = ref or AppRef(slug(app.name, "app").replace("-", "_"))
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
        _with_dead_letters(
            _plan_doc([app.pipelines[i] for i in group], name, options, names, multi,
                      app.on_error), options, names)
        for group, name in zip(groups, doc_names, strict=True)
    ]
    digest = plan_digest(app.name, options.fuse, docs)
    docs = [
        attrs.evolve(d, vertices=tuple(_with_container(v, d, options, ref, digest)
                                       for v in d.vertices))
        for d in docs
    ]
    return VertexGraph(app.name, options, tuple(docs), digest)


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
    """A vertex under construction: its spec class, its works and its own fields."""

    name: str
    cls: type[Vertex]
    works: list[Work]
    fields: dict[str, Any] = attrs.Factory(dict)

    @property
    def state(self) -> str | None:
        return self.fields["state"].name if self.cls is StateVertex else None


def _concurrency(steps: list[Step]) -> int:
    """How many messages an unordered vertex running ``steps`` has awaiting at once: its async
    steps' ``concurrency`` (1 without one: a plain function runs one message at a time)."""
    return max((s.execution.concurrency for s in steps if s.asynchronous), default=1)


def _plan_doc(
    pipelines: list[Pipeline],
    doc_name: str,
    options: PlanOptions,
    names: NameBook,
    multi: bool,
    on_error: ErrorPolicy,
) -> PipelineDoc:
    nodes: dict[str, _Node] = {}
    state_nodes: dict[str, str] = {}
    chains: dict[int, list[str]] = {}  # pipeline -> vertex names, source first, before sinks
    sink_names: dict[int, list[str]] = {}
    encoders: dict[int, tuple[Sink, ...]] = {}  # pipeline -> sinks its last vertex encodes for
    sink_tag: dict[str, str] = {}  # sink vertex -> the tag of the outputs encoded for it
    tag_book = NameBook(limit=MAX_TAG)
    tags = {p.index: tag_book.take(slug(p.name, "p")) for p in pipelines}

    def work(p: Pipeline, run: tuple[int, ...] = (), **more: Any) -> Work:
        return Work(pipeline=p.index, pipeline_name=p.name,
                    steps=tuple(p.steps[i] for i in run), on_error=on_error, **more)

    for p in pipelines:
        prefix = slug(p.name, "p") if multi else ""
        runs = _runs(p, options.fuse)
        chain: list[str] = []
        src = names.take(_role_name(p, "source", multi))
        lead: tuple[int, ...] = ()
        # The source has one replica: a run with a to_parallel step keeps its own vertex.
        if options.fuse and runs and not any(
            p.steps[i].stateful or p.steps[i].parallel or p.steps[i].execution.processes > 1
            for i in runs[0]
        ):
            lead = runs.pop(0)
        decoder = p.source.decoder
        nodes[src] = _source_node(src, p, doc_name, work(p, lead, decoder=decoder))
        chain.append(src)
        for run in runs:
            first = p.steps[run[0]]
            if first.state is not None:
                name = state_nodes.get(first.state.name)
                if name is None:
                    name = state_nodes[first.state.name] = names.take(first.state.name, prefix)
                    parts = options.partitions if first.state.partitioned else 1
                    nodes[name] = _Node(name, StateVertex, [],
                                        {"state": first.state, "partition_count": parts})
                nodes[name].works.append(work(p, run))
            else:
                label = first.name if len(run) == 1 else f"{first.name}-to-{p.steps[run[-1]].name}"
                name = names.take(label, prefix)
                parallel = any(p.steps[i].parallel for i in run) or not options.ordered
                steps = [p.steps[i] for i in run]
                nodes[name] = _Node(name, MapVertex, [work(p, run)],
                                    {"replicas": options.max_replicas if parallel else 1,
                                     "serial": not parallel,
                                     "concurrency": _concurrency(steps) if parallel else 1,
                                     "processes": max(s.execution.processes for s in steps)})
            chain.append(name)
        chains[p.index] = chain
        sink_names[p.index] = []
        # The vertex of the last step runs the encoders (Wallaroo's placement; one hop without a
        # (de)serialization; for a source, its transformer does).
        for i, sink in enumerate(p.sinks):
            suffix = "" if i == 0 else f"-{i + 1}"
            out = names.take(_role_name(p, "sink", multi) + suffix)
            w = work(p, encoded=True)
            if isinstance(sink, KafkaSink):
                nodes[out] = _Node(out, KafkaSinkVertex, [w], _kafka_sink_fields(sink))
            else:
                nodes[out] = _Node(out, TcpSinkVertex, [w],
                                   {"host": sink.host, "port": int(sink.port)})
            sink_names[p.index].append(out)
        if p.sinks:
            encoders[p.index] = tuple(p.sinks)
            if len(p.sinks) > 1:  # each encoding goes to its own sink, told apart by a tag
                for name in sink_names[p.index]:
                    sink_tag[name] = tag_book.take(name)

    # Edges: each pipeline's chain, then its sinks.
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
        if not p.sinks:
            ended.add(p.index)
    # A done() pipeline whose last vertex would have no way out gets a blackhole sink.
    for p in pipelines:
        last = chains[p.index][-1]
        if p.index in ended and not any(a == last for a, _ in order):
            hole = names.take(_role_name(p, "end", multi))
            nodes[hole] = _Node(hole, BlackholeVertex, [work(p)])
            hop(last, hole, p.index)

    edges = []
    for a, b in order:
        served = {w.pipeline for w in nodes[a].works}
        taken = hops[(a, b)]
        outs_for = {pi for (x, _), ps in hops.items() if x == a for pi in ps}
        conditional = taken != served or outs_for != served
        edge_tags = tuple(sorted(tags[i] for i in taken)) if conditional else ()
        if b in sink_tag:
            edge_tags = (sink_tag[b],)
        edges.append(Edge(a, b, edge_tags))
    conditional_src = {e.src for e in edges if e.tags}

    retry = Retry(options.sink_retry_interval, options.sink_retry_cap)
    ordered = {n.name for n in nodes.values() if n.cls is StateVertex or n.fields.get("serial")}
    for node in nodes.values():
        if node.cls in (TcpSinkVertex, KafkaSinkVertex):
            node.fields["retry"] = retry
        if node.cls in (TcpSourceVertex, KafkaSourceVertex, UserSourceVertex):
            node.fields["ordered_writes"] = any(b in ordered for a, b in order if a == node.name)
    vertices = []
    for node in nodes.values():
        works = []
        for w in node.works:
            chain = chains[w.pipeline]
            nxt = _next_in_chain(chain, node.name)
            key_by: Step | None = None
            if nxt is not None and nodes[nxt].state is not None:
                step = next(x for x in nodes[nxt].works if x.pipeline == w.pipeline).steps[0]
                if step.state is not None and step.state.partitioned:
                    key_by = step
            is_last = node.name == chain[-1]
            is_end = is_last and w.pipeline in ended
            tag = tags[w.pipeline] if node.name in conditional_src else None
            sinks = encoders.get(w.pipeline, ()) if is_last else w.sinks
            sink_tags = tuple(sink_tag[n] for n in sink_names[w.pipeline]
                              if n in sink_tag) if is_last else ()
            works.append(attrs.evolve(w, key_by=key_by, tag=tag, emit=not is_end, sinks=sinks,
                                      sink_tags=sink_tags))
        vertices.append(node.cls(name=node.name, works=tuple(works), **node.fields))
    return PipelineDoc(doc_name, tuple(vertices), tuple(edges), tuple(p.index for p in pipelines))


#: vertex kinds whose container runs user code on each message, so can make a dead letter
_USER_CODE = (MapVertex, KafkaSourceVertex, UdSourceVertex)


def _dead_letters(v: Vertex) -> bool:
    """Whether ``v`` runs user code with the dead-letter policy for some message."""
    if not isinstance(v, _USER_CODE):
        return False
    return any(w.on_error.action == DEAD_LETTER_ACTION
               or any(s.on_error is not None and s.on_error.action == DEAD_LETTER_ACTION
                      for s in w.steps) for w in v.works)


def _with_dead_letters(doc: PipelineDoc, options: PlanOptions, names: NameBook) -> PipelineDoc:
    """``doc`` with its dead-letter sink: an edge tagged :data:`DEAD_LETTER` from every vertex
    that may dead-letter, whose other unconditional edges then take everything *not* so tagged
    (numa forwards along every edge whose condition holds)."""
    sources = [v.name for v in doc.vertices if _dead_letters(v)]
    if not sources:
        return doc
    name = names.take("dead-letters")
    kind, addresses, topic = dead_letter_target(options.dead_letters)
    works = tuple(Work(pipeline=w.pipeline, pipeline_name=w.pipeline_name, encoded=True)
                  for v in doc.vertices if v.works and isinstance(v, SourceVertex)
                  for w in v.works)
    retry = Retry(options.sink_retry_interval, options.sink_retry_cap)
    sink: Vertex
    if kind == "kafka":
        sink = KafkaSinkVertex(name=name, works=works, topic=topic, brokers=addresses,
                               producer=(), set_key=False, retry=retry)
    elif kind == "tcp":
        host, _, port = addresses[0].rpartition(":")
        sink = TcpSinkVertex(name=name, works=works, host=host, port=int(port), retry=retry)
    else:
        sink = LogSinkVertex(name=name, works=works)
    edges = [attrs.evolve(e, tags=(DEAD_LETTER,), operator="not")
             if e.src in sources and not e.tags else e for e in doc.edges]
    edges += [Edge(src, name, (DEAD_LETTER,)) for src in sources]
    return attrs.evolve(doc, vertices=(*doc.vertices, sink), edges=tuple(edges),
                        dead_letters=name)


def _source_node(name: str, p: Pipeline, doc_name: str, w: Work) -> _Node:
    source = p.source
    if isinstance(source, GenSource):
        return _Node(name, UserSourceVertex, [w], {"source": source.generator,
                                                   "generated": True})
    if isinstance(source, UserSource):
        return _Node(name, UserSourceVertex, [w], {"source": source.source})
    if isinstance(source, KafkaSource):
        return _Node(name, KafkaSourceVertex, [w], {
            "topic": source.topic,
            "brokers": tuple(f"{h}:{port}" for h, port in source.brokers),
            "consumer_group": f"{doc_name}-{name}",
        })
    return _Node(name, TcpSourceVertex, [w], {
        "host": source.host, "port": int(source.port), "service": f"{doc_name}-{name}-tcp",
    })


def _kafka_sink_fields(sink: KafkaSink) -> dict[str, Any]:
    producer = [("message.max.bytes", str(sink.max_message_size))]
    if sink.max_produce_buffer_ms:
        producer.insert(0, ("linger.ms", str(sink.max_produce_buffer_ms)))
    return {"topic": sink.topic, "brokers": tuple(f"{h}:{p}" for h, p in sink.brokers),
            "producer": tuple(producer)}


def _with_container(v: Vertex, doc: PipelineDoc, options: PlanOptions, ref: AppRef,
                    digest: str) -> Vertex:
    service = v.grpc_service
    if service is None:
        return v  # a Numaflow built-in: no container of ours
    env = [EnvVar("PYTHONUNBUFFERED", "1"), EnvVar(DIGEST_ENV, digest)]
    if isinstance(v, TcpSourceVertex):
        env.append(EnvVar(BIND_HOST_ENV, "0.0.0.0"))
        if options.max_frame is not None:
            env.append(EnvVar(MAX_FRAME_ENV, str(options.max_frame)))
    if isinstance(v, StateVertex):
        if options.state_store_secret:
            name, _, key = options.state_store_secret.partition(":")
            env.append(EnvVar(STATE_STORE_ENV, secret=(name, key or "url")))
        else:
            env.append(EnvVar(STATE_STORE_ENV, options.state_store or "memory://"))
        if options.state_key_secret:
            name, _, key = options.state_key_secret.partition(":")
            env.append(EnvVar(STATE_KEY_ENV, secret=(name, key or "key")))
        if options.id_retention_s != DEFAULT_RETENTION_S:
            env.append(EnvVar(ID_RETENTION_ENV, f"{options.id_retention_s:g}"))
    command = serve_command(ref, v.name, options.fuse, dead_letters=options.dead_letters,
                            ordered=options.ordered)
    if isinstance(v, MapVertex) and v.ordered:
        service = "batchmap"  # numa's batch mode: one round trip per batch, in order
    v = attrs.evolve(v, container=Container(service, command, tuple(env)))
    if isinstance(v, UdSourceVertex):
        command = serve_command(ref, v.name, options.fuse, dead_letters=options.dead_letters,
                                transformer=True, ordered=options.ordered)
        env = [e for e in env if e.name not in (BIND_HOST_ENV, MAX_FRAME_ENV)]
        v = attrs.evolve(v, transformer=Container("sourcetransformer", command, tuple(env)))
    return v


def plan_digest(app_name: str, fuse: bool, docs: list[PipelineDoc]) -> str:
    """A short hash of what the vertices do: names, kinds, steps, states, routing, addresses.

    Deployment choices (partitions, replicas, image, namespace, the state store, containers)
    are left out, so a container that plans the app again from its own command gets the digest
    the manifest carries, and a changed app or other arguments get another."""
    text = json.dumps([app_name, fuse, _canon(docs)], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _canon(value: Any) -> Any:
    """A JSON-able, process-independent form of plan data (user objects by their names)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_canon(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return repr(bytes(value))
    if attrs.has(type(value)):
        fields = {a.name: _canon(getattr(value, a.name)) for a in attrs.fields(type(value))
                  if not a.metadata.get("deploy")}
        return [type(value).__name__, fields]
    # user objects: by qualified name, never by module (an app loaded from a path may carry an
    # alias module name in-process and its plain name in the container)
    fn = getattr(value, "function", value)
    return getattr(fn, "__qualname__", type(value).__qualname__)


def _next_in_chain(chain: list[str], name: str) -> str | None:
    if name in chain:
        i = chain.index(name)
        return chain[i + 1] if i + 1 < len(chain) else None
    return None


def _role_name(p: Pipeline, role: str, multi: bool) -> str:
    """``source``/``sink``/... alone in a one-pipeline document, else prefixed by the pipeline."""
    return f"{slug(p.name, 'p')}-{role}" if multi else role


def _runs(p: Pipeline, fuse: bool) -> list[tuple[int, ...]]:
    """Step indices grouped into vertices: state steps alone; stateless ones alone or fused."""
    runs: list[list[int]] = []
    for i, step in enumerate(p.steps):
        if fuse and not step.stateful and runs and not p.steps[runs[-1][-1]].stateful:
            runs[-1].append(i)
        else:
            runs.append([i])
    return [tuple(r) for r in runs]
