"""Glue: what ``python -m nfbuilder serve --app MODULE --vertex NAME -- ARGS`` runs.

It imports the app, plans it exactly as ``compile`` did, finds the vertex, builds its
``VertexProgram`` and serves it with the matching servicer (map, source transformer, TCP source,
TCP sink)::

    serve_vertex("word_count", "word-totals", ["--in", "0.0.0.0:7010", "--out", "rx:7002"])
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

from nfbuilder.codec import Codec
from nfbuilder.loader import AppLoadError, LoadedApp, load_app
from nfbuilder.plan import META_GROUP, META_PIPELINE, PlanOptions, Vertex, plan
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
from nfbuilder.runtime.state.store import StateStoreError
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


def build_program(
    loaded: LoadedApp, vertex_name: str, *, fuse: bool, state_store: str | None
) -> VertexProgram:
    """The vertex's program, with its state store opened when it serves a state."""
    graph = plan(loaded.app, PlanOptions(fuse=fuse))
    _, vertex = graph.find(vertex_name)
    codec = Codec.for_module(loaded.module)
    store = None
    if vertex.state is not None:
        from nfbuilder.runtime.state.store import open_store

        url = state_store or "memory://"
        store = open_store(url, namespace=slug(loaded.app.name, "app"))
        if not store.durable:
            log.warning("vertex %s: state %r is kept in memory only (%s): it will not survive a "
                        "restart; set NFBUILDER_STATE_STORE", vertex.name, vertex.state, url)
    return VertexProgram(loaded.app, vertex, codec, StateTable(store, codec))


def map_handler(program: VertexProgram) -> Any:
    """A sync map/transformer handler running ``program`` on each datum."""
    process = program.process
    if len(program.pipelines) == 1:
        single = program.pipelines[0]
        meta = pipeline_metadata(program.work(single).pipeline)

        def handle_one(datum: Datum) -> list[Result]:
            # The per-message path of most vertices: no pipeline lookup, metadata prebuilt.
            outs = process(single, datum.value, datum.id)
            return [Result(o.value, o.keys, o.tags, meta) for o in outs]

        return handle_one

    def handle(datum: Datum) -> list[Result]:
        pipeline = pipeline_of(datum.user_metadata)
        outs = process(pipeline, datum.value, datum.id)
        meta = pipeline_metadata(program.work(pipeline).pipeline)
        return [Result(o.value, o.keys, o.tags, meta) for o in outs]

    return handle


class TcpSourceHandler:
    """numa's Read/Ack/Nack over a TCP listener; decoding (and fused steps) run at read time.

    A frame that yields no message (filtered) is acked at once; one that yields several gets
    sub-offsets ``<offset>/<i>`` and is acked when all of them are."""

    def __init__(self, program: VertexProgram, frames: Any, partition: int) -> None:
        self.program = program
        self.frames = frames
        self.partition = partition
        self.pipeline = program.pipelines[0]
        self.meta = pipeline_metadata(self.pipeline)
        self._parts: dict[bytes, int] = {}  # frame offset -> sub-messages not yet acked

    async def start(self) -> None:
        await self.frames.start()

    async def stop(self) -> None:
        await self.frames.stop()

    async def read(self, num_records: int, timeout_s: float) -> list[SourceMessage]:
        out: list[SourceMessage] = []
        for frame in await self.frames.read(num_records, timeout_s):
            msgs = self.program.process(self.pipeline, frame.payload, frame.offset.decode())
            if not msgs:
                self.frames.ack([frame.offset])
            elif len(msgs) == 1:
                out.append(self._message(msgs[0], frame.offset, frame.event_time_ns))
            else:
                self._parts[frame.offset] = len(msgs)
                for i, m in enumerate(msgs):
                    sub = frame.offset + b"/" + str(i).encode()
                    out.append(self._message(m, sub, frame.event_time_ns))
        return out

    def _message(self, m: Out, offset: bytes, event_time_ns: int) -> SourceMessage:
        return SourceMessage(m.value, offset, self.partition, event_time_ns, m.keys,
                             user_metadata=self.meta)

    def _frames_of(self, offsets: Sequence[tuple[bytes, int]], done: bool) -> list[bytes]:
        whole = []
        for offset, _ in offsets:
            base, sep, _i = offset.partition(b"/")
            if not sep:
                whole.append(offset)
            elif done:
                left = self._parts.get(base, 1) - 1
                if left <= 0:
                    self._parts.pop(base, None)
                    whole.append(base)
                else:
                    self._parts[base] = left
            elif base in self._parts:
                self._parts.pop(base)
                whole.append(base)
        return whole

    async def ack(self, offsets: Sequence[tuple[bytes, int]]) -> None:
        self.frames.ack(self._frames_of(offsets, True))

    async def nack(self, offsets: Sequence[tuple[bytes, int]]) -> None:
        self.frames.nack(self._frames_of(offsets, False))

    async def pending(self) -> int:
        return int(self.frames.pending())

    async def partitions(self) -> list[int]:
        return [self.partition]


def sink_handler(program: VertexProgram, writer: Any, peer: str) -> Any:
    """An async sink handler: encode each datum, write the bytes, SUCCESS/FAILURE per id."""
    single = program.pipelines[0] if len(program.pipelines) == 1 else None

    async def handle(batch: Sequence[Datum]) -> list[SinkResult]:
        chunks: list[bytes] = []
        spans: list[tuple[str, int, int]] = []
        for datum in batch:
            pipeline = single if single is not None else pipeline_of(datum.user_metadata)
            start = len(chunks)
            chunks.extend(o.value for o in program.process(pipeline, datum.value, datum.id))
            spans.append((datum.id, start, len(chunks)))
        written = await writer.write(chunks) if chunks else []
        results = []
        for msg_id, a, b in spans:
            ok = all(written[a:b])
            why = "" if ok else f"could not write to {peer}"
            results.append(SinkResult(msg_id, ok, why))
        return results

    return handle


def serve_vertex(
    app_spec: str, vertex_name: str, app_args: Sequence[str], *, fuse: bool = False
) -> int:
    """Serve one vertex until SIGTERM; returns the process exit code."""
    from nfbuilder.runtime.server import serve

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = Settings.from_env()
    try:
        loaded = load_app(app_spec, app_args)
        program = build_program(loaded, vertex_name, fuse=fuse, state_store=settings.state_store)
    except (AppLoadError, KeyError) as exc:
        print(f"nfbuilder serve: {exc}", file=sys.stderr)
        return 2
    except StateStoreError as exc:  # unreachable store: say which (password masked) and stop
        print(f"nfbuilder serve: vertex {vertex_name!r}: {exc}", file=sys.stderr)
        return 1
    vertex: Vertex = program.vertex
    kind = vertex.container
    if kind == "map":
        return serve("map", map_handler(program), settings, ordered=vertex.ordered)
    if kind == "sourcetransformer":
        return serve("sourcetransformer", map_handler(program), settings)
    p = loaded.app.pipelines[vertex.works[0].pipeline]
    if kind == "source":
        from nfbuilder.runtime.tcp import TcpFrameSource

        src: Any = p.source
        host = settings.tcp_bind_host or src.host
        frames = TcpFrameSource(host, int(src.port), src.decoder.header_length(),
                                src.decoder.payload_length)
        return serve("source", TcpSourceHandler(program, frames, settings.replica), settings)
    if kind == "sink":
        from nfbuilder.runtime.tcp import TcpSinkWriter

        sink: Any = p.sinks[vertex.works[0].encode or 0]
        writer = TcpSinkWriter(sink.host, int(sink.port))
        return serve("sink", sink_handler(program, writer, f"{sink.host}:{sink.port}"), settings)
    print(f"nfbuilder serve: vertex {vertex_name!r} is a Numaflow built-in ({vertex.role}); "
          "it has no container to serve", file=sys.stderr)
    return 2
