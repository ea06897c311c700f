"""The in-process graph behind :mod:`nfbuilder.testing`: every vertex of a planned app with its
``VertexProgram``, wired along the plan's edges (tag conditions with ``or`` semantics, the
reserved DROP tag), and the per-hop ``deliver`` functions that carry one message to the sinks.

``nfbuilder.testing.run`` loads the app and checks the inputs, then::

    graph = Graph(application, codec, table, fuse=False, serialize=False)
    graph.feed(0, [b"\\x00\\x00\\x00\\x03abc"])
    graph.outputs          # {'sink': [b'cba\\n']}

The user-facing rules (feed order, message ids, objects or payloads between vertices) are
documented in :mod:`nfbuilder.testing`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from nfbuilder.codec import Codec
from nfbuilder.plan import (
    BlackholeVertex,
    KafkaSinkVertex,
    PlanOptions,
    Router,
    SinkVertex,
    SourceVertex,
    StateVertex,
    TcpSourceVertex,
    UserSourceVertex,
    Vertex,
    output_id,
    plan,
)
from nfbuilder.runtime.core import Out, VertexProgram
from nfbuilder.runtime.errors import UserCodeError
from nfbuilder.runtime.framing import FrameParser, FramingError
from nfbuilder.runtime.statetable import StateTable
from nfbuilder.runtime.usersource import GeneratorSource, take
from nfbuilder.topology import Application, StateSpec

BYTES = (bytes, bytearray, memoryview)  # an input item of these types is payload bytes


#: ``call(value, msg_id, key, serialize) -> outputs``: one vertex's work for one pipeline
_Call = Callable[[Any, str, "str | None", bool], "list[Out]"]
#: ``deliver(value, key, producer, n, i)``: a message into a vertex, and on to the sinks
_Deliver = Callable[[Any, "str | None", str, int, int], None]


@attrs.define
class _Node:
    """A vertex of the run: its program, where its outputs go and how many messages it read."""

    name: str
    vertex: Vertex
    program: VertexProgram
    router: Router
    collect: list[bytes] | None = None  # a sink's output list
    read: int = 0
    delivers: dict[int, _Deliver] = attrs.Factory(dict)  # per pipeline, made by the graph
    # A sink that writes what it gets: the vertex before it encoded the messages (or, for a
    # Numaflow built-in Kafka sink, an encoder vertex did); a blackhole discards.
    built_in_sink: bool = attrs.field(init=False)
    stateful: bool = attrs.field(init=False)  # message ids are only read by state steps
    keyed: bool = attrs.field(init=False)  # a partitioned state vertex: takes the message's key

    def __attrs_post_init__(self) -> None:
        v = self.vertex
        self.built_in_sink = isinstance(v, (KafkaSinkVertex, BlackholeVertex)) or (
            isinstance(v, SinkVertex) and all(w.encoded for w in v.works))
        self.stateful = isinstance(v, StateVertex)
        self.keyed = isinstance(v, StateVertex) and v.state.partitioned


class Graph:
    """Every vertex of the app wired along the plan's edges; ``feed`` pushes one pipeline's
    items through them, depth first, so outputs come out in input order.

    Each (vertex, pipeline) gets a ``deliver`` function that runs the vertex's work on a message
    and calls its destinations' ``deliver`` for each output, in output order then route order:
    a message reaches the sinks before the next one is read, with one Python call per hop."""

    def __init__(self, app: Application, codec: Codec, table: StateTable, fuse: bool,
                 serialize: bool) -> None:
        self.codec = codec
        self.serialize = serialize
        self.ids = table.store is not None  # without a durable store no step reads an id
        self.outputs: dict[str, list[bytes]] = {}
        self.nodes: dict[str, _Node] = {}
        self.sources: dict[int, _Node] = {}
        self._item = (0, "")  # (input item, pipeline name) being fed, for error texts
        graph = plan(app, PlanOptions(fuse=fuse))
        for doc in graph.docs:
            for v in doc.vertices:
                node = _Node(v.name, v, VertexProgram(v, codec, table),
                             Router(doc.edges_from(v.name)))
                if isinstance(v, SinkVertex) and not isinstance(v, BlackholeVertex) \
                        and v.name != doc.dead_letters:  # the harness raises, see testing
                    node.collect = self.outputs.setdefault(v.name, [])
                if isinstance(v, SourceVertex):
                    for w in v.works:
                        self.sources[w.pipeline] = node
                self.nodes[v.name] = node

    def state_specs(self) -> dict[str, StateSpec]:
        """Every state of the app by name."""
        return {n.vertex.state.name: n.vertex.state for n in self.nodes.values()
                if isinstance(n.vertex, StateVertex)}

    def unknown_keys(self) -> dict[str, int]:
        return {n.name: n.program.unknown_keys for n in self.nodes.values() if n.stateful}

    def feed(self, pipeline: int, items: Sequence[Any] | int) -> None:
        source = self.sources[pipeline]
        program = source.program
        work = source.vertex.work_for(pipeline)
        pipeline_name = work.pipeline_name
        acks: list[Any] = []
        if isinstance(items, int):  # take that many from the user source (or the generator)
            vertex = source.vertex
            assert isinstance(vertex, UserSourceVertex)
            user = GeneratorSource(vertex.source) if vertex.generated else vertex.source
            taken = list(take(user, items, f"pipeline {pipeline_name!r}"))
            acks = [ack for ack, _ in taken]
            items = [r.value for _, r in taken]
        # Bytes are decoded by the source; an object enters the source's work after its decoder.
        from_bytes = self._deliver(source, pipeline, functools.partial(program.process, pipeline))
        from_object = self._deliver(source, pipeline, program.stage(pipeline))
        parser = None
        if isinstance(source.vertex, TcpSourceVertex):
            decoder = work.decoder
            parser = FrameParser(decoder.header_length(), decoder.payload_length)
        # a source without a decoder: every item is the message object (bytes ones too)
        objects = not work.decode and isinstance(source.vertex, UserSourceVertex)
        for i, item in enumerate(items):
            self._item = (i, pipeline_name)
            if objects or not isinstance(item, BYTES):
                # Faithfully, the object crossed a hop as a payload (which catches objects a
                # deployment could not send).
                if self.serialize:
                    item = self.codec.loads(self.codec.dumps(item))
                from_object(item, None, "", source.read, 0)
                continue
            payloads = [bytes(item)]
            if parser is not None:
                try:
                    payloads = parser.feed(bytes(item))
                    parser.at_eof()
                except FramingError as exc:
                    raise UserCodeError(
                        f"pipeline {pipeline_name!r} decoder: input item {i} is not framed as "
                        f"the decoder expects: {exc}. Give whole frames (header + payload) as "
                        "a TCP sender sends them, or the decoded object instead of bytes"
                    ) from exc
            for payload in payloads:
                from_bytes(payload, None, "", source.read, 0)
        for ack in acks:  # every record is handled: the source may forget them
            ack()

    def _deliver(self, node: _Node, pipeline: int, call: _Call | None = None) -> _Deliver:
        """``deliver(value, key, producer, n, i)`` for ``node``'s work on ``pipeline``.

        The message is output ``i`` of the ``n``-th message ``producer`` read, i.e. Numaflow's
        id ``<producer>-<n>-<i>`` (built only where it is read: state steps with a durable store,
        errors); ``key`` is the partition key its producer computed, passed on to a partitioned
        state vertex. ``value`` is payload bytes when serializing between vertices (each vertex
        decodes it, as in a deployment), else the object itself. ``call`` replaces the vertex's
        own entry (the source's: from bytes or from an object)."""
        own = call is None  # the vertex's own entry: made once, shared by its producers
        if own and pipeline in node.delivers:
            return node.delivers[pipeline]
        serialize, collect, name = self.serialize, node.collect, node.name
        if node.built_in_sink:

            def written(value: Any, key: str | None, producer: str, n: int, i: int) -> None:
                node.read += 1
                if collect is not None:
                    collect.append(value)

            node.delivers[pipeline] = written
            return written
        if call is None:
            program = node.program
            call = (functools.partial(program.process, pipeline) if serialize
                    else program.stage(pipeline))
        run = call
        ids = self.ids and node.stateful
        router = node.router
        # every destination's deliver, made up front (the plan's edges say which ones)
        targets = {dst: (self._deliver(self.nodes[dst], pipeline), self.nodes[dst].keyed)
                   for dst in router.all}
        located = self._located
        if len(router.untagged) == 1 and collect is None:
            return self._keep(node, pipeline, own, _chain(node, run, ids, targets,
                                                          router.untagged[0], serialize, located))
        destinations = router.destinations

        def deliver(value: Any, key: str | None, producer: str, n: int, i: int) -> None:
            read = node.read
            node.read = read + 1
            try:
                outs = run(value, _msg_id(producer, n, i) if ids else "", key, serialize)
            except UserCodeError as exc:
                raise located(exc, node, producer, n, i) from exc
            if collect is not None:
                for out in outs:
                    collect.append(out[0])
                return
            for j, out in enumerate(outs):
                for dst in destinations(out[2]):
                    nxt, keyed = targets[dst]
                    nxt(out[0], out[1][0] if keyed and out[1] else None, name, read, j)

        return self._keep(node, pipeline, own, deliver)

    @staticmethod
    def _keep(node: _Node, pipeline: int, own: bool, deliver: _Deliver) -> _Deliver:
        if own:
            node.delivers[pipeline] = deliver
        return deliver

    def _located(self, exc: UserCodeError, node: _Node, producer: str, n: int,
                 i: int) -> UserCodeError:
        """``exc`` with the input item, pipeline, message id and vertex it happened at."""
        item, pipeline_name = self._item
        return UserCodeError(
            f"{exc.message} (input item {item} of pipeline {pipeline_name!r}, message "
            f"{_msg_id(producer, n, i)} at vertex {node.name!r})", exc.traceback_text
        )


def _chain(node: _Node, run: _Call, ids: bool, targets: dict[str, tuple[_Deliver, bool]],
           first: str, serialize: bool, located: Callable[..., UserCodeError]) -> _Deliver:
    """``deliver`` for a vertex whose untagged outputs have one destination (``first``): the
    common chain link, without the route loop (the per-hop cost of the harness is mostly
    this function)."""
    nxt, keyed = targets[first]
    name = node.name
    destinations = node.router.destinations

    def deliver(value: Any, key: str | None, producer: str, n: int, i: int) -> None:
        read = node.read
        node.read = read + 1
        try:
            outs = run(value, _msg_id(producer, n, i) if ids else "", key, serialize)
        except UserCodeError as exc:
            raise located(exc, node, producer, n, i) from exc
        for j, (out, keys, tags, _) in enumerate(outs):
            # untagged outputs (most) go to the one destination; tagged ones ask the router
            if not tags:
                nxt(out, keys[0] if keyed and keys else None, name, read, j)
                continue
            for dst in destinations(tags):
                there, keyed_there = targets[dst]
                there(out, keys[0] if keyed_there and keys else None, name, read, j)

    return deliver


def _msg_id(producer: str, n: int, i: int) -> str:
    """``<vertex>-<n>-<i>``; a source's own read is named by its offset ``n``."""
    return output_id(producer, n, i) if producer else str(n)
