"""Glue: what ``python -m nfbuilder serve --app MODULE --vertex NAME -- ARGS`` runs.

The CLI imports the app; here it is planned exactly as ``compile`` did (and checked against the
manifest's plan digest), the vertex's ``VertexProgram`` is built and served with the servicer its
spec calls for (map, source transformer, TCP source, TCP sink)::

    program = build_program(load_app("word_count", args), "word-totals", fuse=False,
                            state_store=settings.state_store, digest=settings.plan_digest)
    code = serve_program(program, settings)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from nfbuilder.codec import Codec
from nfbuilder.loader import LoadedApp
from nfbuilder.plan import (
    DEAD_LETTER,
    META_GROUP,
    META_PIPELINE,
    AppRef,
    KafkaSourceVertex,
    MapVertex,
    PlanOptions,
    StateVertex,
    TcpSinkVertex,
    TcpSourceVertex,
    UdSourceVertex,
    UserSourceVertex,
    Vertex,
    plan,
)
from nfbuilder.plan.names import slug
from nfbuilder.runtime.core import Out, VertexProgram
from nfbuilder.runtime.messages import (
    Datum,
    FrozenMetadata,
    Result,
    SinkResult,
    SourceMessage,
)
from nfbuilder.runtime.settings import Settings
from nfbuilder.runtime.state.store import DEFAULT_ID_RETENTION_S
from nfbuilder.runtime.statetable import StateTable

log = logging.getLogger("nfbuilder.vertex")

#: user metadata carrying each pipeline's index, built once per pipeline
_META_CACHE: dict[int, FrozenMetadata] = {}


def pipeline_metadata(index: int) -> FrozenMetadata:
    """The user metadata that marks a message as pipeline ``index``'s.

    Frozen and shared, so the servicers encode it once per pipeline, not once per message.
    """
    meta = _META_CACHE.get(index)
    if meta is None:
        meta = FrozenMetadata({META_GROUP: {META_PIPELINE: str(index).encode()}})
        _META_CACHE[index] = meta
    return meta


def pipeline_of(user_metadata: Any) -> int | None:
    group = user_metadata.get(META_GROUP) if user_metadata else None
    raw = group.get(META_PIPELINE) if group else None
    return int(raw) if raw else None


class ServeError(Exception):
    """This vertex cannot be served here: it is a Numaflow built-in, or the plan rebuilt in the
    container is not the one the manifest was compiled from (:class:`PlanMismatch`)."""


class PlanMismatch(ServeError):
    """The plan rebuilt in the container is not the one the manifest was compiled from."""


def build_program(
    loaded: LoadedApp, vertex_name: str, *, fuse: bool, state_store: str | None,
    digest: str | None = None, id_retention_s: float = DEFAULT_ID_RETENTION_S,
    partition: int = 0, dead_letters: str = "log", ordered: bool = True,
) -> VertexProgram:
    """The vertex's program, with its state store opened when it serves a state.

    ``digest``: the plan digest the manifest carries; when given, the app planned here must
    have the same one (raises :class:`PlanMismatch`); a built-in vertex raises
    :class:`ServeError`. A state vertex claims ``partition`` (its
    replica) in the store: saves of an earlier owner are refused from then on. Raises
    ``KeyError`` for an unknown vertex and ``StateStoreError`` for a store that cannot be
    opened."""
    graph = plan(loaded.app, PlanOptions(fuse=fuse, dead_letters=dead_letters, ordered=ordered),
                 AppRef(loaded.module_name, loaded.args))
    _, vertex = graph.find(vertex_name)
    if digest and digest != graph.digest:
        raise PlanMismatch(
            f"vertex {vertex_name!r}: the application's plan is not the one this manifest was "
            f"compiled from (plan digest {graph.digest}, the manifest's {digest}): the app or "
            "its arguments changed since 'nfbuilder compile'. Compile again and apply the new "
            "manifest (and image)."
        )
    if vertex.container is None:
        raise ServeError(f"vertex {vertex.name!r} is a Numaflow built-in "
                         f"({type(vertex).__name__}); it has no container to serve")
    codec = Codec.for_module(loaded.module)
    store = None
    fence = None
    if isinstance(vertex, StateVertex):
        from nfbuilder.runtime.state.store import open_store

        url = state_store or "memory://"
        store = open_store(url, namespace=slug(loaded.app.name, "app"),
                           id_retention_s=id_retention_s)
        # this process owns its partition from now on: a save by an older owner still running
        # (a pod being replaced) is refused, so no update is lost to last-writer-wins
        fence = (partition, store.claim(vertex.state_name, partition))
        if not store.durable:
            log.warning("vertex %s: state %r is kept in memory only (%s): it will not survive a "
                        "restart; set NFBUILDER_STATE_STORE", vertex.name, vertex.state_name,
                        url)
    return VertexProgram(vertex, codec, StateTable(store, codec, fence))


def map_handler(program: VertexProgram) -> Any:
    """A sync map/transformer handler running ``program`` on each datum, under the steps' error
    policies (``VertexProgram.handle``)."""
    process = program.handle
    if len(program.pipelines) == 1:
        single = program.pipelines[0]
        meta = pipeline_metadata(program.work(single).pipeline)

        def payload(msg_id: str, value: bytes) -> list[Out]:
            # The per-message path of most vertices: no pipeline lookup, no Result objects.
            return process(single, value, msg_id)

        def handle_one(datum: Datum) -> list[Result]:
            return [Result(o.value, o.keys, o.tags, meta, o.event_time_ns)
                    for o in process(single, datum.value, datum.id)]

        # it reads only the id and value: the map servicer need not build a Datum (PayloadFn)
        handle_one.payload = payload  # type: ignore[attr-defined]
        handle_one.payload_metadata = meta  # type: ignore[attr-defined]
        return handle_one

    def handle(datum: Datum) -> list[Result]:
        pipeline = pipeline_of(datum.user_metadata)
        outs = process(pipeline, datum.value, datum.id)
        meta = pipeline_metadata(program.work(pipeline).pipeline)
        return [Result(o.value, o.keys, o.tags, meta, o.event_time_ns) for o in outs]

    return handle


class TcpSourceHandler:
    """numa's Read/Ack/Nack over a TCP listener: the frames as they came. The vertex's
    transformer container decodes them (``map_handler``), so a frame the decoder rejects is a
    dead letter like any other failed message, and the listener never runs user code but the
    framing's ``payload_length``."""

    def __init__(self, frames: Any, partition: int) -> None:
        self.frames = frames
        self.partition = partition

    async def start(self) -> None:
        await self.frames.start()

    async def stop(self) -> None:
        await self.frames.stop()

    async def read(self, num_records: int, timeout_s: float) -> list[SourceMessage]:
        part = self.partition
        return [SourceMessage(f.payload, f.offset, part, f.event_time_ns)
                for f in await self.frames.read(num_records, timeout_s)]

    async def ack(self, offsets: Sequence[tuple[bytes, int]]) -> None:
        self.frames.ack([o for o, _ in offsets])

    async def nack(self, offsets: Sequence[tuple[bytes, int]]) -> None:
        self.frames.nack([o for o, _ in offsets])

    async def pending(self) -> int:
        return int(self.frames.pending())

    async def partitions(self) -> list[int]:
        return [self.partition]


def user_source_handler(program: VertexProgram, replica: int) -> Any:
    """The source handler of a user source vertex (a generator's, for a ``GenSourceConfig``):
    record values pickled by the app's codec, or as they are for the transformer's decoder."""
    from nfbuilder.runtime.usersource import GeneratorSource, UserSourceHandler

    vertex = program.vertex
    assert isinstance(vertex, UserSourceVertex)
    work = vertex.works[0]
    source = GeneratorSource(vertex.source) if vertex.generated else vertex.source
    return UserSourceHandler(source, None if work.decode else program.codec, replica,
                             f"pipeline {work.pipeline_name!r}")


def sink_handler(program: VertexProgram, writer: Any, peer: str) -> Any:
    """An async sink handler: encode each datum, write the bytes, SUCCESS/FAILURE per id."""
    single = program.pipelines[0] if len(program.pipelines) == 1 else None
    failed = f"could not write to {peer}"
    if single is not None and program.work(single).encoded:
        # The usual sink vertex: one pipeline whose messages came encoded. Each is written as
        # it came (what ``program.handle`` returns for it, one chunk, never a dead letter).

        async def write_values(batch: Sequence[Datum]) -> list[SinkResult]:
            written = await writer.write([d.value for d in batch]) if batch else []
            return [SinkResult(d.id, ok, "" if ok else failed)
                    for d, ok in zip(batch, written, strict=True)]

        return write_values

    async def handle(batch: Sequence[Datum]) -> list[SinkResult]:
        chunks: list[bytes] = []
        spans: list[tuple[str, int, int]] = []
        for datum in batch:
            pipeline = single if single is not None else pipeline_of(datum.user_metadata)
            start = len(chunks)
            for o in program.handle(pipeline, datum.value, datum.id):
                if DEAD_LETTER in o.tags:  # a sink has no edge on: its dead letters are logged
                    log.error("dead letter record: %s", o.value.decode().rstrip())
                else:
                    chunks.append(o.value)
            spans.append((datum.id, start, len(chunks)))
        written = await writer.write(chunks) if chunks else []
        results = []
        for msg_id, a, b in spans:
            ok = all(written[a:b])
            results.append(SinkResult(msg_id, ok, "" if ok else failed))
        return results

    return handle


def serve_program(program: VertexProgram, settings: Settings, *,
                  transformer: bool = False) -> int:
    """Serve ``program``'s vertex with its servicer until SIGTERM; returns the exit code.
    ``transformer``: a udsource vertex's transformer container (it decodes the records)."""
    from nfbuilder.runtime.server import serve

    vertex: Vertex = program.vertex
    if transformer and not isinstance(vertex, UdSourceVertex):
        raise ServeError(f"vertex {vertex.name!r} has no transformer container of ours "
                         f"({type(vertex).__name__})")
    if isinstance(vertex, MapVertex):  # ordered ones in batch mode (the spec's service)
        assert vertex.container is not None
        batch = vertex.container.service == "batchmap"
        handler = map_handler(program)
        if batch:  # a state vertex saves once per key per batch, before the batch is answered
            program.states.defer_saves()
            handler.end_of_batch = program.states.flush
        pool = None
        if vertex.processes > 1:  # forked now, before the server's loop and threads exist
            from nfbuilder.runtime.servicers.mapper import map_bytes_answer
            from nfbuilder.runtime.workers import WorkerPool

            pool = WorkerPool(map_bytes_answer(handler), vertex.processes, name=vertex.name)
            pool.start()
        waits = any(s.asynchronous for w in vertex.works for s in w.steps)
        return serve("batchmap" if batch else "map", handler, settings, ordered=vertex.ordered,
                     workers=vertex.concurrency, pool=pool, waits=waits)
    if isinstance(vertex, KafkaSourceVertex) or transformer:
        return serve("sourcetransformer", map_handler(program), settings)
    if isinstance(vertex, TcpSourceVertex):
        from nfbuilder.runtime.tcp import TcpFrameSource

        decoder = vertex.works[0].decoder
        host = settings.tcp_bind_host or vertex.host
        frames = TcpFrameSource(host, vertex.port, decoder.header_length(),
                                decoder.payload_length, max_frame=settings.max_frame,
                                max_buffered_bytes=settings.source_buffer_bytes,
                                max_partial_bytes=settings.source_partial_bytes)
        return serve("source", TcpSourceHandler(frames, settings.replica), settings)
    if isinstance(vertex, UserSourceVertex):
        return serve("source", user_source_handler(program, settings.replica), settings)
    if isinstance(vertex, TcpSinkVertex):
        from nfbuilder.runtime.tcp import TcpSinkWriter

        writer = TcpSinkWriter(vertex.host, vertex.port)
        peer = f"{vertex.host}:{vertex.port}"
        return serve("sink", sink_handler(program, writer, peer), settings)
    raise AssertionError(f"build_program made a program for {type(vertex).__name__}")
