"""The embedded engine: run a whole app on one machine, from the same plan as ``compile``.

Every vertex with a container runs as a real process from its manifest command (one per partition
for ordered vertices) and is driven over real gRPC the way Numaflow's ``numa`` drives it: source
read/ack, map streams with bounded in-flight requests, sink batches, key-hash routing into
partitions, tag conditions, DROP. Buffers between vertices are bounded, so a slow sink pushes back
on the sources (and TCP on the senders); a source offset is acked only once every message derived
from it was written by a sink or dropped. A process that dies is restarted with backoff and its
unacknowledged messages are sent again with the same ids.

::

    engine = Engine(load_app("apps/word_count.py", args), EngineOptions(until_idle=2))
    code = asyncio.run(engine.run())
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import signal
import sys
import tempfile
import time
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import attrs

from nfbuilder.emit.manifest import serve_command
from nfbuilder.loader import LoadedApp
from nfbuilder.local.clients import ClientError, SinkDatum
from nfbuilder.local.kafka import (
    KafkaConsumer,
    KafkaRecord,
    KafkaSinkReplica,
    KafkaUnavailable,
    kafka_sink_spec,
    kafka_source_spec,
    parse_offset,
)
from nfbuilder.local.process import Replica, ReplicaDied, ReplicaSpec
from nfbuilder.local.status import Status
from nfbuilder.plan import (
    MAP,
    SINK,
    SOURCE,
    PipelineDoc,
    PlanOptions,
    Vertex,
    VertexGraph,
    plan,
)
from nfbuilder.plan.names import slug
from nfbuilder.runtime.messages import DROP

log = logging.getLogger("nfbuilder.engine")
MAX_RESTARTS = 5  # consecutive failed restarts of one replica before the run is given up


class EngineError(Exception):
    """The run cannot go on (a vertex keeps failing, an unsupported vertex...)."""


@attrs.frozen
class EngineOptions:
    plan: PlanOptions = PlanOptions()
    until_idle: float | None = None
    max_messages: int | None = None
    quiet: bool = False
    work_dir: str | None = None
    read_batch: int = 500
    read_timeout_ms: int = 100


class Token:
    """Counts the live messages derived from one source message; acks it at zero."""

    __slots__ = ("count", "offset", "src")

    def __init__(self, src: _SourceState, offset: tuple[bytes, int]) -> None:
        self.src, self.offset, self.count = src, offset, 1

    def add(self, n: int) -> None:
        self.count += n
        if self.count <= 0:
            self.src.done.append(self.offset)


@attrs.define(slots=True)
class Msg:
    id: str
    value: bytes
    keys: tuple[str, ...]
    event_time_ns: int
    meta: Any
    token: Token


@attrs.define
class _SourceState:
    replica: Replica
    done: list[tuple[bytes, int]] = attrs.Factory(list)


def _child_id(vertex: str, parent: str, index: int) -> str:
    digest = hashlib.blake2b(parent.encode(), digest_size=8).hexdigest()
    return f"{vertex}-{digest}-{index}"


class Engine:
    """Runs the vertices of ``loaded``'s plan as processes and moves messages between them."""

    def __init__(self, loaded: LoadedApp, options: EngineOptions = EngineOptions()) -> None:
        self.loaded = loaded
        self.options = options
        self.graph: VertexGraph = plan(loaded.app, options.plan)
        self.work_dir = Path(options.work_dir or tempfile.mkdtemp(prefix="nfbuilder-run-"))
        self.replicas: dict[str, list[Replica]] = {}
        self.vertices: dict[str, Vertex] = {}
        self.edges: dict[str, list[Any]] = defaultdict(list)
        self.sources: list[_SourceState] = []
        self.status = Status(quiet=options.quiet)
        self.delivered = 0
        self.entered = 0
        self.last_move = time.monotonic()
        self.failure: str | None = None
        self._store_url = ""
        #: (replica, seconds from failure to ready again, messages redelivered) per restart
        self.recoveries: list[tuple[str, float, int]] = []
        self._stop = asyncio.Event()
        self._draining = False
        self._tasks: list[asyncio.Task[Any]] = []

    # -- set-up ------------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        candidates = (self.loaded.search_dir, os.getcwd(), os.environ.get("PYTHONPATH"))
        paths = [p for p in candidates if p]
        env = {"PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}
        store = self.options.plan.state_store
        if not store:
            state_dir = Path(".nfbuilder") / slug(self.loaded.app.name, "app")
            state_dir.mkdir(parents=True, exist_ok=True)
            store = f"sqlite:///{state_dir / 'state.db'}"
        env["NFBUILDER_STATE_STORE"] = self._store_url = store
        return env

    def _build(self) -> None:
        self._kafka_consumers: dict[str, tuple[KafkaConsumer, _SourceState]] = {}
        env = self._env()
        args = (self.loaded.module_name, tuple(self.loaded.args))
        for doc in self.graph.docs:
            for e in doc.edges:
                self.edges[e.src].append(e)
            for v in doc.vertices:
                self.vertices[v.name] = v
                if v.role == "kafka" and v.kind == SINK:
                    self._build_kafka_sink(doc, v)
                    continue
                if v.container is None:
                    continue  # blackhole: handled in-engine
                from nfbuilder.emit.manifest import AppRef

                cmd = tuple(serve_command(AppRef(*args), v.name, self.options.plan.fuse))
                count = v.partitions if v.ordered else 1
                self.replicas[v.name] = [
                    Replica(ReplicaSpec(doc.name, v.name, v.container, r, cmd, v.ordered,
                                        1 if v.ordered else 500), self.work_dir, env,
                            len(self.vertices) * 100 + r)
                    for r in range(count)
                ]

    # -- routing -----------------------------------------------------------------------------
    async def _route(self, vertex: str, parent_id: str, token: Token, results: Any) -> None:
        outs: list[tuple[Replica, Msg]] = []
        for i, r in enumerate(results):
            if DROP in r.tags:
                continue
            for edge in self.edges[vertex]:
                if edge.tags and not set(edge.tags).intersection(r.tags):
                    continue
                dst = self.vertices[edge.dst]
                msg = Msg(_child_id(edge.dst, parent_id, i), r.value, tuple(r.keys),
                          time.time_ns(), r.user_metadata, token)
                reps = self.replicas.get(edge.dst)
                if reps is None:  # blackhole
                    continue
                idx = zlib.crc32(":".join(msg.keys).encode()) % len(reps) if dst.ordered else 0
                outs.append((reps[idx], msg))
        token.add(len(outs) - 1)
        for rep, msg in outs:
            await rep.queue.put(msg)
        self.last_move = time.monotonic()

    # -- workers -----------------------------------------------------------------------------
    async def _next(self, rep: Replica) -> Msg:
        while True:
            await rep.ready.wait()
            if rep.redeliver:
                return rep.redeliver.popleft()  # type: ignore[no-any-return]
            try:
                return await asyncio.wait_for(rep.queue.get(), 0.2)
            except asyncio.TimeoutError:
                continue

    async def _call_map(self, rep: Replica, msg: Msg) -> Any:
        """The map results of ``msg``, or None when the replica failed (msg is redelivered)."""
        try:
            return await rep.client.map(msg.id, msg.keys, msg.value, msg.event_time_ns,
                                        None, None, msg.meta)
        except (ClientError, AttributeError) as exc:
            rep.redeliver.append(msg)
            self._failed(rep, exc)
            return None

    async def _map_worker(self, rep: Replica) -> None:
        """Up to ``in_flight`` requests at once (one for ordered vertices, as numa drives them);
        results are routed in arrival order, as a serial Wallaroo step would emit them, so an
        ordered vertex downstream sees each key's messages in order."""
        calls: asyncio.Queue[tuple[Msg, asyncio.Future[Any]]] = asyncio.Queue(rep.spec.in_flight)

        async def route_in_order() -> None:
            while True:
                msg, call = await calls.get()
                results = await call
                if results is not None:
                    rep.processed += 1
                    await self._route(rep.spec.vertex, msg.id, msg.token, results)
                calls.task_done()

        router = asyncio.ensure_future(route_in_order())
        try:
            while True:
                msg = await self._next(rep)
                await calls.put((msg, asyncio.ensure_future(self._call_map(rep, msg))))
                if rep.spec.ordered:
                    await calls.join()
        finally:
            router.cancel()

    async def _sink_worker(self, rep: Replica) -> None:
        backoff = 0.05
        while True:
            batch = [await self._next(rep)]
            while len(batch) < self.options.read_batch:
                if rep.redeliver:
                    batch.append(rep.redeliver.popleft())
                elif not rep.queue.empty():
                    batch.append(rep.queue.get_nowait())
                else:
                    break
            while batch:
                data = [SinkDatum(m.id, m.value, m.keys, m.event_time_ns,
                                  user_metadata=m.meta or {}) for m in batch]
                try:
                    outcome = await rep.client.write(data)
                except (ClientError, AttributeError) as exc:
                    rep.redeliver.extendleft(reversed(batch))
                    self._failed(rep, exc)
                    break
                failed = [m for m in batch if not outcome[m.id][0]]
                for m in batch:
                    if outcome[m.id][0]:
                        rep.processed += 1
                        self.delivered += 1
                        m.token.add(-1)
                self.last_move = time.monotonic()
                if failed:
                    log.debug("%s: %d writes failed (%s); retrying", rep.spec.label, len(failed),
                              outcome[failed[0].id][1])
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 1.0)
                else:
                    backoff = 0.05
                batch = failed

    async def _source_worker(self, src: _SourceState) -> None:
        rep = src.replica
        while not self._draining:
            await rep.ready.wait()
            try:
                if src.done:
                    done, src.done = src.done, []
                    await rep.client.ack(done)
                records = await rep.client.read(self.options.read_batch,
                                                self.options.read_timeout_ms)
            except (ClientError, AttributeError) as exc:
                self._failed(rep, exc)
                continue
            for r in records:
                token = Token(src, (r.offset, r.partition_id))
                msg_id = f"{rep.spec.vertex}-{base64.b64encode(r.offset).decode()}-0"
                self.entered += 1
                rep.processed += 1
                await self._route(rep.spec.vertex, msg_id, token, [_SourceResult(r)])

    async def _ack_leftovers(self) -> None:
        for src in self.sources:
            if src.done and src.replica.client is not None:
                done, src.done = src.done, []
                with contextlib.suppress(ClientError):
                    await src.replica.client.ack(done)

    # -- Kafka (Numaflow's built-in source and sink) --------------------------------------------
    def _build_kafka_sink(self, doc: PipelineDoc, v: Vertex) -> None:
        spec = ReplicaSpec(doc.name, v.name, "kafka-sink", 0, ())
        self.replicas[v.name] = [KafkaSinkReplica(spec, kafka_sink_spec(self.graph, doc, v),
                                                  self.work_dir, len(self.vertices) * 100)]

    async def _open_kafka_sources(self) -> None:
        for name in self.replicas:
            doc, v = self.graph.find(name)
            if v.kind != SOURCE or v.role != "kafka":
                continue
            try:
                consumer = await KafkaConsumer.open(kafka_source_spec(self.graph, doc, v))
            except KafkaUnavailable as exc:
                await self.stop_processes()
                raise EngineError(f"vertex {name} did not start: {exc}") from None
            self._kafka_consumers[name] = (consumer, _SourceState(self.replicas[name][0]))

    async def _kafka_source_worker(self, consumer: KafkaConsumer, src: _SourceState) -> None:
        """Consume, transform (concurrently, routed in record order), commit the done prefix."""
        rep = src.replica
        while not self._draining:
            self._kafka_done(src, consumer)
            await consumer.commit()
            records = await consumer.poll(self.options.read_batch, self.options.read_timeout_ms)
            outs = await asyncio.gather(*(self._kafka_transform(rep, r) for r in records))
            for r, results in zip(records, outs, strict=True):
                self.entered += 1
                rep.processed += 1
                token = Token(src, (r.offset_bytes, r.partition))
                await self._route(rep.spec.vertex, f"{rep.spec.vertex}-{r.offset_id}", token,
                                  results)

    async def _kafka_transform(self, rep: Replica, r: KafkaRecord) -> Any:
        while True:  # numa retries a record until its transformer answers
            await rep.ready.wait()
            try:
                return await rep.client.transform(r.offset_id, r.keys, r.value, r.event_time_ns,
                                                  headers=r.headers)
            except (ClientError, AttributeError) as exc:
                self._failed(rep, exc)
                await asyncio.sleep(0.05)  # a stopping replica stays "ready": do not spin

    @staticmethod
    def _kafka_done(src: _SourceState, consumer: KafkaConsumer) -> None:
        done, src.done = src.done, []
        for offset, _ in done:
            _, partition, number = parse_offset(offset)
            consumer.tracker.done(partition, number)

    async def _close_kafka_sources(self) -> None:
        """Commit what is done (after a drain: everything) and leave the consumer groups."""
        for name, (consumer, src) in getattr(self, "_kafka_consumers", {}).items():
            self._kafka_done(src, consumer)
            try:
                await consumer.close()
            except Exception as exc:  # noqa: BLE001 - a broker gone at shutdown is not fatal
                log.warning("Kafka source %s: close failed: %s", name, exc)

    # -- supervision -------------------------------------------------------------------------
    def _failed(self, rep: Replica, exc: BaseException) -> None:
        if rep.ready.is_set() and not rep.stopping:
            rep.ready.clear()
            self._tasks.append(asyncio.ensure_future(self._restart(rep, exc)))

    async def _restart(self, rep: Replica, exc: BaseException | None) -> None:
        failed_at = time.monotonic()
        report = None
        if rep.proc is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(rep.proc.wait(), 5)
            report = rep.error_report()
        await rep.stop(grace_s=2)
        why = report or (
            str(exc) if exc else f"exited with status {rep.proc and rep.proc.returncode}"
        )
        self.status.event(f"vertex {rep.spec.label} failed: {why}")
        # A crash loop is a run of failures with no message processed in between (the same
        # message failing again, a store that stays down...): give up after MAX_RESTARTS.
        rep.streak = rep.streak + 1 if rep.processed == rep.processed_at_failure else 1
        rep.processed_at_failure = rep.processed
        failures = rep.streak - 1
        while not self._stop.is_set():
            rep.restarts += 1
            failures += 1
            if failures > MAX_RESTARTS:
                self.failure = f"vertex {rep.spec.label} keeps failing: {why}"
                self._stop.set()
                return
            await asyncio.sleep(min(0.2 * 2 ** (failures - 1), 5))
            try:
                await rep.start()
                self.recoveries.append(
                    (rep.spec.label, time.monotonic() - failed_at, len(rep.redeliver)))
                self.status.event(f"vertex {rep.spec.label} restarted (restart #{rep.restarts}); "
                                  f"redelivering {len(rep.redeliver)} message(s)")
                return
            except (ReplicaDied, ClientError, OSError) as err:
                why = rep.error_report() or f"{err}\n{rep.log_tail()}"
                await rep.stop(grace_s=1)

    async def _watch(self, rep: Replica) -> None:
        """Notice a process that exits on its own (kill -9, crash) and restart it."""
        while not self._stop.is_set():
            proc = rep.proc
            if proc is None or not rep.ready.is_set():
                await asyncio.sleep(0.1)
                continue
            await proc.wait()
            if not rep.stopping and rep.proc is proc and rep.ready.is_set():
                self._failed(rep, RuntimeError(f"process exited with status {proc.returncode}"))

    # -- run ---------------------------------------------------------------------------------
    async def start(self) -> None:
        self._build()
        store = self._store_url
        if store.startswith("memory://") and any(v.state for v in self.vertices.values()):
            self.status.event(
                "warning: state store memory:// keeps state inside the vertex processes only; it "
                "is lost when one restarts (use --state-store sqlite:///... or redis://...)",
                always=True)
        all_reps = [r for reps in self.replicas.values() for r in reps]
        results = await asyncio.gather(*(r.start() for r in all_reps), return_exceptions=True)
        for rep, res in zip(all_reps, results, strict=True):
            if isinstance(res, BaseException):
                detail = rep.error_report() or rep.log_tail()
                await self.stop_processes()
                raise EngineError(f"vertex {rep.spec.label} did not start: {res}\n{detail}")
        await self._open_kafka_sources()
        for name, reps in self.replicas.items():
            v = self.vertices[name]
            for rep in reps:
                if v.role == "kafka" and v.kind == SINK:
                    self._tasks.append(asyncio.ensure_future(self._sink_worker(rep)))
                    continue  # no process to watch
                self._tasks.append(asyncio.ensure_future(self._watch(rep)))
                if v.kind == SOURCE and v.role == "kafka":
                    self._tasks.append(asyncio.ensure_future(
                        self._kafka_source_worker(*self._kafka_consumers[name])))
                elif v.kind == SOURCE:
                    src = _SourceState(rep)
                    self.sources.append(src)
                    self._tasks.append(asyncio.ensure_future(self._source_worker(src)))
                elif v.kind == MAP:
                    self._tasks.append(asyncio.ensure_future(self._map_worker(rep)))
                elif v.kind == SINK:
                    self._tasks.append(asyncio.ensure_future(self._sink_worker(rep)))
        self.status.event(f"running {self.loaded.app.name!r}: {len(all_reps)} processes, "
                          f"work dir {self.work_dir}")

    def in_flight(self) -> int:
        return sum(
            r.queue.qsize() + len(r.redeliver) for reps in self.replicas.values() for r in reps
        )

    async def wait(self) -> None:
        """Until Ctrl-C/SIGTERM, idleness, the message limit or a fatal failure."""
        opts = self.options
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.1)
            self.status.update(self)
            if opts.max_messages is not None and self.delivered >= opts.max_messages:
                break
            if (opts.until_idle is not None and self.entered
                    and time.monotonic() - self.last_move >= opts.until_idle):
                break

    async def drain(self, timeout_s: float = 10.0) -> None:
        self._draining = True
        deadline = time.monotonic() + timeout_s
        # Polled: in_flight() is derived from several queues, with no single event to wait on.
        while self.in_flight() and time.monotonic() < deadline and not self.failure:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await self._ack_leftovers()

    async def stop_processes(self) -> None:
        for t in self._tasks:
            t.cancel()
        await self._close_kafka_sources()
        reps = [r for reps in self.replicas.values() for r in reps]
        for r in reps:
            r.stopping = True
        await asyncio.gather(*(r.stop() for r in reps), return_exceptions=True)

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        """Start, run until an end condition, drain, stop; 0 when nothing failed."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.start()
            await self.wait()
            if not self.failure:
                await self.drain()
        finally:
            await self.stop_processes()
            self.status.update(self, final=True)
        if self.failure:
            print(f"nfbuilder run: {self.failure}", file=sys.stderr)
            return 1
        return 0


@attrs.frozen
class _SourceResult:
    """A source record seen as a map result, so routing treats both alike."""

    record: Any

    @property
    def value(self) -> bytes:
        return self.record.payload  # type: ignore[no-any-return]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.record.keys)

    @property
    def tags(self) -> tuple[str, ...]:
        return ()

    @property
    def user_metadata(self) -> Any:
        return self.record.user_metadata


def run_cli(ns: Any, app_args: list[str]) -> int:
    """``nfbuilder run APP [options] -- ARGS``."""
    from nfbuilder.loader import AppLoadError, load_app

    try:
        loaded = load_app(ns.app, app_args)
    except AppLoadError as exc:
        print(f"nfbuilder run: {exc}", file=sys.stderr)
        return 2
    options = EngineOptions(
        plan=PlanOptions(partitions=ns.partitions, max_replicas=ns.max_replicas, fuse=ns.fuse,
                         state_store=ns.state_store),
        until_idle=ns.until_idle, max_messages=ns.max_messages,
        quiet=ns.quiet, work_dir=ns.work_dir,
    )
    logging.basicConfig(level=logging.WARNING)
    try:
        return asyncio.run(Engine(loaded, options).run())
    except EngineError as exc:
        print(f"nfbuilder run: {exc}", file=sys.stderr)
        return 1
