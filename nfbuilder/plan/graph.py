"""The plan: which Numaflow vertices an application becomes, each as a complete spec.

The planner computes every fact about a vertex once: its kind (the spec's class), its resolved
configuration (addresses, topics, consumer group, producer settings), the user objects it runs,
its partitions and ordering, its tags, and the container command and environment it runs with.
``emit`` serializes the specs; ``runtime`` (``serve``), ``local`` (the engine), the in-process
harness and the diagram read them. None of them goes back to the ``Application``::

    graph = plan(app, PlanOptions(), AppRef("word_count", ("--in", "h:7010", "--out", "h:7002")))
    doc, v = graph.find("word-totals")
    v                      # StateVertex(name='word-totals', ..., partitions=2)
    v.container.command    # ('python', '-m', 'nfbuilder', 'serve', '--app', 'word_count', ...)

The kinds are types: ``isinstance(v, SourceVertex)`` rather than a kind string.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from nfbuilder.topology import ErrorPolicy, Sink, StateSpec, Step, TcpSink

#: user-metadata group and key that carry a message's pipeline index between vertices
META_GROUP, META_PIPELINE = "nfbuilder", "pipeline"
#: environment variables our containers read (``runtime.settings`` is where they are read)
DIGEST_ENV = "NFBUILDER_PLAN_DIGEST"
STATE_STORE_ENV = "NFBUILDER_STATE_STORE"
ID_RETENTION_ENV = "NFBUILDER_STATE_ID_RETENTION"
BIND_HOST_ENV = "NFBUILDER_TCP_BIND_HOST"
MAX_FRAME_ENV = "NFBUILDER_MAX_FRAME"
STATE_KEY_ENV = "NFBUILDER_STATE_KEY"


@attrs.frozen
class AppRef:
    """How a container imports the app: the module name and ``application_setup``'s args."""

    module: str
    args: tuple[str, ...] = ()


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
    #: "secret-name:key" holding the key state snapshots are signed with (NFBUILDER_STATE_KEY)
    state_key_secret: str | None = None
    #: sink retries: first interval and cap of the exponential backoff (factor 2), in seconds
    sink_retry_interval: float = attrs.field(default=0.05, validator=attrs.validators.gt(0))
    sink_retry_cap: float = attrs.field(default=2.0, validator=attrs.validators.gt(0))
    isbsvc: str | None = None  # the InterStepBufferService to use (Numaflow's default: default)
    #: serial steps (``to``) keep their order: ordered vertices, one message at a time. False
    #: trades Wallaroo's order for throughput: every stateless vertex is autoscaled.
    ordered: bool = True
    #: how long state vertices keep applied message ids (see runtime.state.store)
    id_retention_s: float = attrs.field(default=120.0, validator=attrs.validators.ge(0))
    #: where dead letters go on Numaflow: ``log`` (the built-in log sink), ``kafka://BROKER[,
    #: BROKER]/TOPIC`` or ``tcp://HOST:PORT`` (the engine writes them to a file instead)
    dead_letters: str = "log"
    #: the largest frame a TCP source accepts, in bytes (None: the runtime's default, 16 MiB)
    max_frame: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(1)))

    def __attrs_post_init__(self) -> None:
        dead_letter_target(self.dead_letters)  # raises ValueError for a bad one
        if self.sink_retry_cap < self.sink_retry_interval:
            raise ValueError(f"the sink retry cap ({self.sink_retry_cap:g} s) is below its "
                             f"first interval ({self.sink_retry_interval:g} s)")


@attrs.frozen
class EnvVar:
    """One container environment variable: a value, or a key of a Secret (``secret=(name,
    key)``)."""

    name: str
    value: str | None = None
    secret: tuple[str, str] | None = None


@attrs.frozen
class Container:
    """What our container in a vertex runs: which gRPC service (``source``,
    ``sourcetransformer``, ``map``, ``batchmap``: map.v1 in batch mode, or ``sink``), its
    command and its environment."""

    service: str
    command: tuple[str, ...]
    env: tuple[EnvVar, ...]

    def values(self) -> dict[str, str]:
        """The plain-valued variables (a Secret's value is not known outside the cluster)."""
        return {e.name: e.value for e in self.env if e.value is not None}


@attrs.frozen(kw_only=True)
class Work:
    """What a vertex does to messages of one pipeline, in order: decode (sources, with
    ``decoder``), the ``steps``, key the outputs with ``key_by``'s partition function (the
    partitioned state step of the next vertex), tag the outputs with ``tag`` for routing;
    ``emit=False``: the pipeline ends here (``done()``).

    ``sinks``: encode each output with each of these sinks' encoders (the vertex before the
    sinks does, as Wallaroo ran the encoder with the last step); with several sinks each
    encoding carries its sink's tag from ``sink_tags``. ``encoded``: the messages arrive encoded
    and are written as they are (a sink vertex)."""

    pipeline: int
    pipeline_name: str
    decoder: Any = None
    steps: tuple[Step, ...] = ()
    sinks: tuple[Sink, ...] = ()
    sink_tags: tuple[str, ...] = ()
    encoded: bool = False
    key_by: Step | None = None
    tag: str | None = None
    emit: bool = True
    #: the error policy of the decoder, the encoders and every step without its own
    on_error: ErrorPolicy = ErrorPolicy()

    def policy(self, step: str | None) -> ErrorPolicy:
        """The error policy of ``step`` (None: the decoder or an encoder)."""
        for s in self.steps:
            if s.name == step and s.on_error is not None:
                return s.on_error
        if self.key_by is not None and self.key_by.name == step and self.key_by.on_error:
            return self.key_by.on_error
        return self.on_error

    @property
    def decode(self) -> bool:
        return self.decoder is not None

    @property
    def step_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.steps)


# Fields marked DEPLOY are how a vertex is deployed, not what it does: the plan digest leaves
# them out, so the container (which plans without the deployment options) gets the same digest.
DEPLOY = {"deploy": True}


@attrs.frozen(kw_only=True)
class Vertex:
    """A vertex of a Numaflow ``Pipeline``; the subclasses are its kinds."""

    name: str
    works: tuple[Work, ...]
    container: Container | None = attrs.field(default=None, metadata=DEPLOY)

    #: ordered processing (one message at a time per partition pod, routed by key hash)
    ordered: ClassVar[bool] = False
    #: the gRPC service our container serves (None: a Numaflow built-in, no container of ours)
    grpc_service: ClassVar[str | None] = None
    #: how ``describe`` names the kind: ``"map/udf"``
    manifest_kind: ClassVar[str] = "?"

    @property
    def partitions(self) -> int:
        return 1

    @property
    def max_replicas(self) -> int:
        """The autoscaling ceiling; 1 for a vertex that keeps one pod per partition."""
        return 1

    @property
    def state_name(self) -> str | None:
        return None

    @property
    def pipelines(self) -> tuple[int, ...]:
        return tuple(w.pipeline for w in self.works)

    def work_for(self, pipeline: int) -> Work:
        for work in self.works:
            if work.pipeline == pipeline:
                return work
        raise KeyError(f"vertex {self.name!r} serves no pipeline {pipeline}")


@attrs.frozen(kw_only=True)
class SourceVertex(Vertex):
    """A source vertex (one replica: a Wallaroo source is one listener or one consumer);
    ``ordered_writes``: it feeds an ordered vertex, so it writes one message at a time
    (``limits.concurrency: 1``), in the order it read them."""

    ordered_writes: bool = attrs.field(default=False, metadata=DEPLOY)


@attrs.frozen(kw_only=True)
class UdSourceVertex(SourceVertex):
    """``source.udsource``: our container serves the records as they came (it runs no user
    code but the source's own), and a second container of ours, the source's
    ``transformer``, decodes them and runs the vertex's work (fused steps, keying, encoding),
    so it can tag dead letters as a source cannot."""

    grpc_service: ClassVar[str | None] = "source"
    manifest_kind: ClassVar[str] = "source/udsource"

    transformer: Container | None = attrs.field(default=None, metadata=DEPLOY)


@attrs.frozen(kw_only=True)
class TcpSourceVertex(UdSourceVertex):
    """A udsource listening on ``host:port`` for Wallaroo-framed messages; a ``Service`` named
    ``service`` exposes the port in the cluster."""

    host: str
    port: int
    service: str = attrs.field(metadata=DEPLOY)


@attrs.frozen(kw_only=True)
class UserSourceVertex(UdSourceVertex):
    """A udsource serving the records of a user-defined source (``UserSourceConfig``:
    ``source`` is the user's object) or, ``generated=True``, of a Wallaroo 0.5.4
    ``GenSourceConfig`` generator (``source``: its ``initial_value()``/``apply(previous)``
    object), which the runtime reads through the same user-source code."""

    #: compared by class: the object is made anew by each application_setup call, and two
    #: plans of the same app must be equal
    source: Any = attrs.field(eq=lambda obj: type(obj).__qualname__)
    generated: bool = False


@attrs.frozen(kw_only=True)
class KafkaSourceVertex(SourceVertex):
    """Numaflow's built-in ``source.kafka`` in ``consumer_group``; our container is its
    ``transformer`` and decodes each record."""

    grpc_service: ClassVar[str | None] = "sourcetransformer"
    manifest_kind: ClassVar[str] = "source/kafka"

    topic: str
    brokers: tuple[str, ...]
    consumer_group: str


@attrs.frozen(kw_only=True)
class MapVertex(Vertex):
    """A ``udf`` vertex running stateless steps: serial (``to``: ``serial=True``, one ordered
    partition, one message at a time, so Wallaroo's order holds) or autoscaled up to
    ``replicas`` (``to_parallel``, or every step with ``PlanOptions(ordered=False)``)."""

    grpc_service: ClassVar[str | None] = "map"
    manifest_kind: ClassVar[str] = "map/udf"

    replicas: int = attrs.field(default=1, metadata=DEPLOY)
    serial: bool = attrs.field(default=False, metadata=DEPLOY)
    #: messages its async steps await at once (1 on an ordered vertex: one at a time)
    concurrency: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    #: worker processes running its steps behind the one socket (``processes=`` of a step)
    processes: int = attrs.field(default=1, validator=attrs.validators.ge(1))

    @property
    def ordered(self) -> bool:  # type: ignore[override]
        return self.serial

    @property
    def max_replicas(self) -> int:
        return 1 if self.serial else self.replicas


@attrs.frozen(kw_only=True)
class StateVertex(MapVertex):
    """An ordered ``udf`` vertex holding one named state, with ``partition_count`` pods."""

    state: StateSpec
    partition_count: int = attrs.field(metadata=DEPLOY)

    ordered: ClassVar[bool] = True

    @property
    def partitions(self) -> int:
        return self.partition_count

    @property
    def max_replicas(self) -> int:
        return 1

    @property
    def state_name(self) -> str:
        return self.state.name


@attrs.frozen
class Retry:
    """How a sink retries what it could not write: exponential backoff from ``interval_s``,
    times ``factor``, up to ``cap_s`` between attempts, for as long as it fails (numa's
    ``onFailure: retry``)."""

    interval_s: float
    cap_s: float
    factor: float = 2.0


@attrs.frozen(kw_only=True)
class SinkVertex(Vertex):
    """A sink vertex; ``retry`` is how it retries failed writes (None: it cannot fail)."""

    retry: Retry | None = attrs.field(default=None, metadata=DEPLOY)


@attrs.frozen(kw_only=True)
class TcpSinkVertex(SinkVertex):
    """``sink.udsink``: our container encodes and writes to ``host:port``."""

    grpc_service: ClassVar[str | None] = "sink"
    manifest_kind: ClassVar[str] = "sink/udsink"

    host: str
    port: int


@attrs.frozen(kw_only=True)
class KafkaSinkVertex(SinkVertex):
    """Numaflow's built-in ``sink.kafka`` writing the encoder vertex's records to ``topic``,
    with librdkafka ``producer`` settings."""

    manifest_kind: ClassVar[str] = "sink/kafka"

    topic: str
    brokers: tuple[str, ...]
    producer: tuple[tuple[str, str], ...]
    set_key: bool = True


@attrs.frozen(kw_only=True)
class LogSinkVertex(SinkVertex):
    """Numaflow's built-in ``sink.log``: each message goes to the vertex's log (where dead
    letters go by default)."""

    manifest_kind: ClassVar[str] = "sink/log"


@attrs.frozen(kw_only=True)
class BlackholeVertex(SinkVertex):
    """Numaflow's built-in ``sink.blackhole``: where a ``done()`` pipeline ends."""

    manifest_kind: ClassVar[str] = "sink/blackhole"


@attrs.frozen
class Edge:
    """``src -> dst``, for the outputs whose tags meet the condition: ``operator`` (numa's
    ``or``, ``and`` or ``not``) over ``tags``; no tags: every output."""

    src: str
    dst: str
    tags: tuple[str, ...] = ()
    operator: str = "or"


@attrs.frozen
class PipelineDoc:
    """One Numaflow ``Pipeline`` object: a connected set of vertices."""

    name: str
    vertices: tuple[Vertex, ...]
    edges: tuple[Edge, ...]
    pipelines: tuple[int, ...]
    #: the sink vertex the dead letters of this document go to (None: no step dead-letters)
    dead_letters: str | None = None

    def vertex(self, name: str) -> Vertex:
        for vertex in self.vertices:
            if vertex.name == name:
                return vertex
        raise KeyError(name)

    def edges_from(self, name: str) -> tuple[Edge, ...]:
        return tuple(e for e in self.edges if e.src == name)


@attrs.frozen
class VertexGraph:
    """The plan of an application: its documents, the options, and the digest of what the
    vertices do (``digest`` is the same wherever the same app is planned with the same
    arguments and ``fuse``, whatever the deployment options)."""

    app_name: str
    options: PlanOptions
    docs: tuple[PipelineDoc, ...]
    digest: str

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
        return [f"{doc.name}/{v.name}: {describe_vertex(v)}" for doc in self.docs
                for v in doc.vertices]


def dead_letter_target(spec: str) -> tuple[str, tuple[str, ...], str]:
    """``(kind, addresses, topic)`` of a dead-letter sink option: ``("log", (), "")``,
    ``("kafka", ("b1:9092", ...), "topic")``, ``("tcp", ("host:port",), "")``; raises ValueError
    for anything else."""
    text = spec.strip()
    if text == "log":
        return "log", (), ""
    scheme, sep, rest = text.partition("://")
    if sep and scheme == "kafka":
        brokers, _, topic = rest.partition("/")
        found = tuple(b for b in brokers.split(",") if b)
        if found and topic and all(_host_port(b) for b in found):
            return "kafka", found, topic
    if sep and scheme == "tcp" and _host_port(rest):
        return "tcp", (rest,), ""
    raise ValueError(f"dead-letter sink {spec!r}: use log, kafka://BROKER[,BROKER]/TOPIC or "
                     "tcp://HOST:PORT")


def _host_port(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


def sink_address(sink: Sink) -> str:
    return f"{sink.host}:{sink.port}" if isinstance(sink, TcpSink) else f"topic {sink.topic}"


def describe_vertex(v: Vertex) -> str:
    """``'map/udf [Split and Count] 'split into words'; autoscaled to 4'``."""
    parts: list[str] = []
    for w in v.works:
        bits: list[str] = []
        if isinstance(v, UserSourceVertex):
            bits.append("generator source" if v.generated else "user-defined source")
        elif w.decode:
            bits.append(f"{'tcp' if isinstance(v, TcpSourceVertex) else 'kafka'} source")
        bits += [repr(name) for name in w.step_names]
        if w.sinks and isinstance(v, SinkVertex):
            bits.append(f"{w.sinks[0].kind} sink")
        elif w.sinks:
            bits.append("encode for " + ", ".join(f"{k.kind} sink" for k in w.sinks))
        elif isinstance(v, TcpSinkVertex):
            bits.append("tcp sink")
        parts.append(f"[{w.pipeline_name}] " + " -> ".join(bits or ["(built-in)"]))
    extra = ""
    if isinstance(v, StateVertex):
        extra = f"; state {v.state_name!r}, {v.partitions} partition(s), ordered"
    elif isinstance(v, MapVertex):
        extra = "; serial, ordered" if v.ordered else f"; autoscaled to {v.max_replicas:d}"
        if v.concurrency > 1:
            extra += f", {v.concurrency} awaiting at once"
        if v.processes > 1:
            extra += f", {v.processes} worker processes"
    return f"{v.manifest_kind} " + "; ".join(parts) + extra
