"""The embedded engine: run a whole app on one machine, from the same plan as ``compile``.

Every vertex with a container runs as a real process from its manifest command (one per partition
for ordered vertices) and is driven over real gRPC the way Numaflow's ``numa`` drives it: source
read/ack, map streams with bounded in-flight requests, sink batches, key-hash routing into
partitions, tag conditions, DROP. Buffers between vertices are bounded, so a slow sink pushes back
on the sources (and TCP on the senders); a source offset is acked only once every message derived
from it was written by a sink or dropped. A process that dies is restarted with backoff and its
unacknowledged messages are sent again with the same ids.

This module builds and orchestrates; message movement is in :mod:`nfbuilder.local.flow`,
restarts in :mod:`nfbuilder.local.supervisor`, Kafka in :mod:`nfbuilder.local.kafka_flow`.

::

    engine = Engine(load_app("apps/word_count.py", args), EngineOptions(until_idle=2))
    code = asyncio.run(engine.run())
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import attrs

from nfbuilder.loader import LoadedApp
from nfbuilder.local.flow import Flow, SourceState
from nfbuilder.local.kafka import KafkaUnavailable
from nfbuilder.local.kafka_flow import KafkaSources, kafka_sink_replica
from nfbuilder.local.process import Replica, ReplicaSpec
from nfbuilder.local.status import Status
from nfbuilder.local.supervisor import Supervisor
from nfbuilder.plan import (
    AppRef,
    KafkaSinkVertex,
    KafkaSourceVertex,
    MapVertex,
    PlanOptions,
    SinkVertex,
    SourceVertex,
    Vertex,
    VertexGraph,
    plan,
)
from nfbuilder.plan.graph import BIND_HOST_ENV
from nfbuilder.plan.names import slug

#: replicas of an autoscaled (to_parallel) vertex on the engine: more than one, so results
#: interleave as on Numaflow, and few, for a laptop
LOCAL_REPLICAS = 2


class EngineError(Exception):
    """The run cannot go on (a vertex keeps failing, an unsupported vertex...)."""


@attrs.frozen
class EngineOptions:
    """How ``nfbuilder run`` runs an app: the plan, end conditions, display and batch sizes.

    ::

        EngineOptions(PlanOptions(state_store="memory://"), until_idle=2, quiet=True)
    """

    plan: PlanOptions = PlanOptions()
    until_idle: float | None = None
    max_messages: int | None = None
    quiet: bool = False
    work_dir: str | None = None
    fresh: bool = False  # empty the state store before the run
    #: seconds before a restarted vertex's unacknowledged messages come back, newer ones
    #: flowing meanwhile (JetStream's ackWait); 0: at once
    redelivery_delay: float = 0.0
    read_batch: int = 500
    read_timeout_ms: int = 100


class Engine:
    """Runs the vertices of ``loaded``'s plan as processes and moves messages between them."""

    def __init__(self, loaded: LoadedApp, options: EngineOptions = EngineOptions()) -> None:
        self.loaded = loaded
        self.options = options
        self.work_dir = Path(options.work_dir or tempfile.mkdtemp(prefix="nfbuilder-run-"))
        # The default store lives in the work dir: a new run (new temp dir) starts empty, as
        # Wallaroo without resilience did; the same --work-dir resumes.
        self._store_url = options.plan.state_store or f"sqlite:///{self.work_dir / 'state.db'}"
        self.graph: VertexGraph = plan(
            loaded.app, attrs.evolve(options.plan, state_store=self._store_url),
            AppRef(loaded.module_name, loaded.args))
        self.replicas: dict[str, list[Replica]] = {}
        self.vertices: dict[str, Vertex] = {}
        self.status = Status(quiet=options.quiet)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self.supervisor = Supervisor(self.status, stop=self._stop, tasks=self._tasks,
                                     redelivery_delay=options.redelivery_delay)
        self.flow = Flow(self.vertices, self.replicas, read_batch=options.read_batch,
                         read_timeout_ms=options.read_timeout_ms,
                         on_failure=self.supervisor.failed)
        self.kafka = KafkaSources(self.flow)

    # -- what the flow and the supervisor count, read as the engine's own ----------------------
    @property
    def entered(self) -> int:
        """Messages read from the sources so far."""
        return self.flow.entered

    @property
    def delivered(self) -> int:
        """Messages written by the sinks so far."""
        return self.flow.delivered

    @property
    def last_move(self) -> float:
        """``time.monotonic()`` when a message last moved."""
        return self.flow.last_move

    @property
    def failure(self) -> str | None:
        """Why the run was given up, or None."""
        return self.supervisor.failure

    @property
    def recoveries(self) -> list[tuple[str, float, int]]:
        """(replica, seconds from failure to ready again, messages redelivered) per restart."""
        return self.supervisor.recoveries

    # -- set-up ------------------------------------------------------------------------------
    def _env(self, v: Vertex) -> dict[str, str]:
        """The vertex container's environment from its spec, plus what a local process needs."""
        assert v.container is not None
        secrets = [e.name for e in v.container.env if e.secret is not None]
        if secrets:
            raise EngineError(f"vertex {v.name}: {', '.join(secrets)} come(s) from a Kubernetes "
                              "Secret, which the embedded engine cannot read; give the value "
                              "itself (e.g. --state-store)")
        candidates = (self.loaded.search_dir, os.getcwd(), os.environ.get("PYTHONPATH"))
        paths = [p for p in candidates if p]
        # A local TCP source listens where the app says, not on every interface as in a pod.
        return {**v.container.values(), BIND_HOST_ENV: "",
                "PYTHONPATH": os.pathsep.join(paths)}

    def _build(self) -> None:
        for doc in self.graph.docs:
            for v in doc.vertices:
                self.flow.edges[v.name] = list(doc.edges_from(v.name))
            for v in doc.vertices:
                self.vertices[v.name] = v
                if isinstance(v, KafkaSinkVertex):
                    self.replicas[v.name] = [kafka_sink_replica(
                        doc.name, v, self.work_dir, len(self.vertices) * 100)]
                    continue
                if v.container is None:
                    continue  # blackhole: handled in-engine
                env = self._env(v)
                # ordered: one pod per partition; autoscaled: a few, as numa scales them up
                count = v.partitions if v.ordered else min(v.max_replicas, LOCAL_REPLICAS)
                self.replicas[v.name] = [
                    Replica(ReplicaSpec(doc.name, v.name, v.container.service, r,
                                        v.container.command, v.ordered,
                                        1 if v.ordered else 500, indexed=v.partitions > 1
                                        or count > 1), self.work_dir, env,
                            len(self.vertices) * 100 + r)
                    for r in range(count)
                ]

    def _open_state(self) -> None:
        """Say which state store the run uses and what it resumes (``fresh``: empty it first)."""
        url = self._store_url
        if url.startswith("memory://"):
            self.status.event(
                "warning: state store memory:// keeps state inside the vertex processes only; it "
                "is lost when one restarts (use --state-store sqlite:///... or redis://...)",
                always=True)
            return
        from nfbuilder.runtime.state.store import StateStoreError, open_store

        try:
            store = open_store(url, namespace=slug(self.loaded.app.name, "app"))
        except StateStoreError as exc:
            raise EngineError(str(exc)) from None
        try:
            shown = store.url_for_display
            if self.options.fresh:
                n = store.clear()
                self.status.event(f"state store {shown}: --fresh: {n} key(s) of an earlier run "
                                  "deleted, starting empty", always=True)
                return
            n = store.count()
        except StateStoreError as exc:
            raise EngineError(str(exc)) from None
        finally:
            store.close()
        if n:
            self.status.event(f"state store {shown}: resuming {n} key(s) from an earlier run "
                              "(--fresh starts empty)", always=True)
        else:
            self.status.event(f"state store {shown}: empty, starting fresh")

    async def _open_kafka_sources(self) -> None:
        for name in self.replicas:
            v = self.vertices[name]
            if not isinstance(v, KafkaSourceVertex):
                continue
            try:
                await self.kafka.open(v, self.replicas[name][0])
            except KafkaUnavailable as exc:
                await self.stop_processes()
                raise EngineError(f"vertex {name} did not start: {exc}") from None

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.ensure_future(work))

    # -- run ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start every vertex process and the workers; raises EngineError if one cannot start."""
        self._build()
        if any(v.state_name for v in self.vertices.values()):
            self._open_state()
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
                if isinstance(v, KafkaSinkVertex):
                    self._spawn(self.flow.sink_worker(rep))
                    continue  # no process to watch
                self._spawn(self.supervisor.watch(rep))
                if isinstance(v, KafkaSourceVertex):
                    self._spawn(self.kafka.worker(name))
                elif isinstance(v, SourceVertex):
                    src = SourceState(rep)
                    self.flow.sources.append(src)
                    self._spawn(self.flow.source_worker(src))
                elif isinstance(v, MapVertex):
                    self._spawn(self.flow.map_worker(rep))
                elif isinstance(v, SinkVertex):
                    self._spawn(self.flow.sink_worker(rep))
        self.status.event(f"running {self.loaded.app.name!r}: {len(all_reps)} processes, "
                          f"work dir {self.work_dir}")

    def in_flight(self) -> int:
        """Messages queued or waiting for redelivery, over all replicas."""
        return self.flow.in_flight()

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
        """Stop reading the sources, let what is in flight reach the sinks, ack it."""
        self.flow.draining = True
        deadline = time.monotonic() + timeout_s
        # Polled: in_flight() is derived from several queues, with no single event to wait on.
        while self.in_flight() and time.monotonic() < deadline and not self.failure:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await self.flow.ack_leftovers()

    async def stop_processes(self) -> None:
        """Cancel the workers, close the Kafka consumers, stop every process."""
        for t in self._tasks:
            t.cancel()
        await self.kafka.close()
        reps = [r for reps in self.replicas.values() for r in reps]
        for r in reps:
            r.stopping = True
        await asyncio.gather(*(r.stop() for r in reps), return_exceptions=True)

    def request_stop(self) -> None:
        """End ``wait()`` (as Ctrl-C does)."""
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
