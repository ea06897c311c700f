"""The embedded engine: run a whole app on one machine, from the same plan as ``compile``.

Every vertex with a container runs as a real process from its manifest command (one per partition
for ordered vertices) and is driven over real gRPC the way Numaflow's ``numa`` drives it: source
read/ack, map streams with bounded in-flight requests, sink batches, key-hash routing into
partitions, tag conditions, DROP, dead letters (written to a file). Buffers between vertices are
bounded in messages and in bytes, so a slow sink pushes back on the sources (and TCP on the
senders); a source offset is acked only once every message derived from it was written by a sink,
dropped or dead-lettered. A process that dies is restarted with backoff and its
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
import secrets
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import attrs

from nfbuilder.loader import LoadedApp
from nfbuilder.local.flow import DeadLetterFile, Flow, SourceState
from nfbuilder.local.kafka import KafkaUnavailable
from nfbuilder.local.kafka_flow import KafkaSources, kafka_sink_replica
from nfbuilder.local.process import Replica, ReplicaSpec
from nfbuilder.local.status import Status
from nfbuilder.local.supervisor import Supervisor
from nfbuilder.plan import (
    AppRef,
    Container,
    KafkaSinkVertex,
    KafkaSourceVertex,
    MapVertex,
    PlanOptions,
    SinkVertex,
    SourceVertex,
    TcpSourceVertex,
    UdSourceVertex,
    Vertex,
    VertexGraph,
    plan,
)
from nfbuilder.plan.graph import BIND_HOST_ENV
from nfbuilder.plan.names import slug
from nfbuilder.runtime import heap
from nfbuilder.runtime.state.signing import KEY_ENV

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
    #: where dead letters go (default: ``dead-letters.jsonl`` in the work dir)
    dead_letters: str | None = None
    #: a message a step works on for longer than this many seconds is reported while it runs
    busy_warning_s: float = 10.0
    #: seconds a stopping run waits for the messages in flight to reach the sinks
    grace_s: float = 10.0


class Engine:
    """Runs the vertices of ``loaded``'s plan as processes and moves messages between them."""

    def __init__(self, loaded: LoadedApp, options: EngineOptions = EngineOptions()) -> None:
        self.loaded = loaded
        self.options = options
        #: a work dir of our own making is removed after a clean run
        self._own_work_dir = options.work_dir is None
        self.work_dir = Path(options.work_dir or tempfile.mkdtemp(prefix="nfbuilder-run-"))
        # The default store lives in the work dir: a new run (new temp dir) starts empty, as
        # Wallaroo without resilience did; the same --work-dir resumes.
        self._store_url = options.plan.state_store or f"sqlite:///{self.work_dir / 'state.db'}"
        #: what the vertex processes (and the engine's own look at the store) sign state with
        self._key_env = self._state_key(options.plan.state_store is None)
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
        self.dead_letter_path = Path(options.dead_letters or self.work_dir / "dead-letters.jsonl")
        self.flow.dead_letters = DeadLetterFile(self.dead_letter_path)
        #: transformer replica of each TCP source vertex (its second container)
        self.transformers: dict[str, list[Replica]] = {}
        self._reported_busy: set[str] = set()
        #: why messages count as lost beyond those in flight (a source process that died)
        self.loss_notes: list[str] = []

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
    def _state_key(self, default_store: bool) -> dict[str, str]:
        """``{NFBUILDER_STATE_KEY: key}`` for the vertex processes: the environment's, else for
        the default store a key of the work dir's own (made once, kept next to the state, so
        the same --work-dir resumes); else none (the store warns)."""
        if os.environ.get(KEY_ENV):
            return {KEY_ENV: os.environ[KEY_ENV]}
        if not default_store:
            return {}
        path = self.work_dir / "state.key"
        if not path.exists():
            self.work_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        return {KEY_ENV: path.read_text().strip()}

    def _env(self, v: Vertex, container: Container | None = None) -> dict[str, str]:
        """The environment of the vertex's ``container`` (default: its main one) from its spec,
        plus what a local process needs."""
        container = container or v.container
        assert container is not None
        secrets = [e.name for e in container.env if e.secret is not None]
        if secrets:
            raise EngineError(f"vertex {v.name}: {', '.join(secrets)} come(s) from a Kubernetes "
                              "Secret, which the embedded engine cannot read; give the value "
                              "itself (e.g. --state-store)")
        candidates = (self.loaded.search_dir, os.getcwd(), os.environ.get("PYTHONPATH"))
        paths = [p for p in candidates if p]
        # A local TCP source listens where the app says, not on every interface as in a pod.
        return {**container.values(), **self._key_env, BIND_HOST_ENV: "",
                "PYTHONPATH": os.pathsep.join(paths)}

    def _build(self) -> None:
        for doc in self.graph.docs:
            for v in doc.vertices:
                self.flow.edges[v.name] = list(doc.edges_from(v.name))
            if doc.dead_letters:  # written by the engine to its dead-letter file
                self.flow.dead_letter_vertices.add(doc.dead_letters)
            for v in doc.vertices:
                self.vertices[v.name] = v
                if v.name in self.flow.dead_letter_vertices:
                    continue
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
                                        v.container.command, indexed=v.partitions > 1
                                        or count > 1), self.work_dir, env,
                            len(self.vertices) * 100 + r)
                    for r in range(count)
                ]
                if isinstance(v, UdSourceVertex) and v.transformer is not None:
                    # the source pod's second container: one per source replica
                    env = self._env(v, v.transformer)
                    self.transformers[v.name] = [
                        Replica(ReplicaSpec(doc.name, v.name, "sourcetransformer", r,
                                            v.transformer.command, role="transformer"),
                                self.work_dir, env, len(self.vertices) * 100 + 50 + r)
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
            store = open_store(url, namespace=slug(self.loaded.app.name, "app"),
                               environ=self._key_env)
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
        task = asyncio.ensure_future(work)
        task.add_done_callback(self._worker_ended)
        self._tasks.append(task)

    def _worker_ended(self, task: asyncio.Future[None]) -> None:
        """A worker ends when it is cancelled, or a source's when the run drains; one that
        raised hit a bug of ours: the run stops with it, named, instead of never going idle."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        detail = "".join(traceback.format_exception(exc)).rstrip()
        self.status.event(f"an engine worker failed: {exc!r}\n{detail}", always=True)
        if self.supervisor.failure is None:
            self.supervisor.failure = f"an engine worker failed: {exc!r}"
        self._stop.set()

    # -- run ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start every vertex process and the workers; raises EngineError if one cannot start."""
        self._build()
        if any(v.state_name for v in self.vertices.values()):
            self._open_state()
        all_reps = self._all_replicas()
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
                    transformer = self.transformers.get(name, [None])[rep.spec.replica]
                    src = SourceState(rep, self.flow.tally(v.works[0].pipeline_name),
                                      transformer)
                    self.flow.sources.append(src)
                    if transformer is not None:
                        self._spawn(self.supervisor.watch(transformer))
                    self._spawn(self.flow.source_worker(src))
                elif isinstance(v, MapVertex):
                    self._spawn(self.flow.map_worker(rep))
                elif isinstance(v, SinkVertex):
                    self._spawn(self.flow.sink_worker(rep))
        self.status.event(f"running {self.loaded.app.name!r}: {len(all_reps)} processes, "
                          f"work dir {self.work_dir}")

    def replica_groups(self) -> dict[str, list[Replica]]:
        """The replicas of each vertex, and of each TCP source's transformer
        (``"source/transformer"``), for the status display."""
        groups = dict(self.replicas)
        for name, reps in self.transformers.items():
            groups[f"{name}/transformer"] = reps
        return groups

    def _all_replicas(self) -> list[Replica]:
        return [r for group in (self.replicas, self.transformers) for reps in group.values()
                for r in reps]

    def in_flight(self) -> int:
        """Messages queued or waiting for redelivery, over all replicas."""
        return self.flow.in_flight()

    def idle(self) -> bool:
        """Nothing in flight: every message read is done (a step busy on one is not idle)."""
        return self.flow.open_count() == 0

    def busy(self, older_than_s: float = 0.0) -> list[tuple[str, str, float]]:
        """``(replica, message id, seconds)`` of each message a replica has been working on for
        ``older_than_s`` or longer (all of them by default)::

            for label, msg_id, seconds in engine.busy(older_than_s=60): ...
        """
        now = time.monotonic()
        found = []
        for r in self._all_replicas():
            for msg_id, t0 in r.busy.items():
                seconds = now - t0
                if seconds < older_than_s:
                    # the rest are younger still: flow.py's ``_call_map`` and ``transform``
                    # add a message's id as they send it, so a dict's order is the send order
                    break
                found.append((r.spec.label, msg_id, seconds))
        return found

    def _report_busy(self) -> None:
        for label, msg_id, seconds in self.busy(older_than_s=self.options.busy_warning_s):
            if msg_id not in self._reported_busy:
                self._reported_busy.add(msg_id)
                self.status.event(f"warning: vertex {label} has been busy on "
                                  f"message {msg_id} for {seconds:.0f} s", always=True)

    async def wait(self) -> None:
        """Until Ctrl-C/SIGTERM, idleness, the message limit or a fatal failure."""
        opts = self.options
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.1)
            self.status.update(self)
            self._report_busy()
            if opts.max_messages is not None and self.delivered >= opts.max_messages:
                break
            if (opts.until_idle is not None and self.entered and self.idle()
                    and time.monotonic() - self.last_move >= opts.until_idle):
                break

    async def drain(self, timeout_s: float | None = None) -> None:
        """Stop reading the sources, let what is in flight reach the sinks (for up to the grace
        period), ack it."""
        self.flow.draining = True
        deadline = time.monotonic() + (self.options.grace_s if timeout_s is None else timeout_s)
        # Polled: the open count is derived from several sources, with no single event.
        while not self.idle() and time.monotonic() < deadline and not self.failure:  # noqa: ASYNC110
            self._report_busy()
            await asyncio.sleep(0.05)
        await self.flow.ack_leftovers()

    async def stop_processes(self) -> None:
        """Cancel the workers, close the Kafka consumers, stop every process."""
        for t in self._tasks:
            t.cancel()
        await self.kafka.close()
        reps = self._all_replicas()
        for r in reps:
            r.stopping = True
        await asyncio.gather(*(r.stop() for r in reps), return_exceptions=True)

    def request_stop(self) -> None:
        """End ``wait()`` (as Ctrl-C does)."""
        self._stop.set()

    def summary(self) -> list[str]:
        """The end-of-run accounting: a line per pipeline, then what was not delivered."""
        lines = [tally.line() for tally in self.flow.tallies.values()]
        if any(t.lost for t in self.flow.tallies.values()):
            where = [f"vertex {label} busy on message {msg_id} for {seconds:.0f} s"
                     for label, msg_id, seconds in self.busy()]
            where += [f"{reps[0].spec.vertex}: {n} queued" for reps in self.replicas.values()
                      if (n := sum(r.pending for r in reps))]
            lines.append("not delivered when the run stopped: " + ("; ".join(where) or
                                                                   "in flight between vertices"))
        lines += self.loss_notes
        if self.flow.dead_letters is not None and self.flow.dead_letters.count:
            lines.append(f"{self.flow.dead_letters.count} dead letter(s) in "
                         f"{self.dead_letter_path}")
        return lines

    def lost_messages(self) -> bool:
        """Whether the run lost messages: in flight at the end, buffered by a source process that
        died, or every message of a pipeline dropped by a rule."""
        tallies = self.flow.tallies.values()
        return (any(t.lost for t in tallies) or bool(self.loss_notes)
                or any(t.entered and t.dropped and not t.delivered for t in tallies))

    def _note_source_deaths(self) -> None:
        for src in self.flow.sources:
            rep = src.replica
            # a user source reads again what it never saw acked; a TCP source cannot
            if rep.restarts and isinstance(self.vertices[rep.spec.vertex], TcpSourceVertex):
                self.loss_notes.append(
                    f"source {rep.spec.label} was restarted {rep.restarts} time(s): what it "
                    "had received but not handed on (TCP data is acknowledged on receipt) is "
                    "lost")

    async def run(self) -> int:
        """Start, run until an end condition, drain, stop. Exit status: 0 when nothing was lost,
        1 when the run failed, 3 when messages were lost (the summary says which)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        summary: list[str] = []
        try:
            # frozen before the replicas start: their clients are dropped on a restart, and a
            # frozen object in a dropped cycle would never be collected
            heap.settle()
            await self.start()
            await self.wait()
            if not self.failure:
                await self.drain()
            self._note_source_deaths()
            self.flow.settle()  # after a failure there was no drain to do it
            summary = self.summary()  # before the stop: it names what steps are busy on
        finally:
            await self.stop_processes()
            if self.flow.dead_letters is not None:
                self.flow.dead_letters.close()
            self.status.update(self, final=True)
        for line in summary:
            self.status.event(line, always=True)
        if self.failure:
            print(f"nfbuilder run: {self.failure}", file=sys.stderr)
            code = 1
        elif self.lost_messages():
            print("nfbuilder run: messages were lost (see the summary above)", file=sys.stderr)
            code = 3
        else:
            code = 0
        self._tidy(code)
        return code

    def _tidy(self, code: int) -> None:
        """Remove a work dir of our own after a clean run, unless dead letters are in it."""
        keeps_letters = (self.flow.dead_letters is not None and self.flow.dead_letters.count
                         and self.work_dir in self.dead_letter_path.parents)
        if code == 0 and self._own_work_dir and not keeps_letters:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        elif self._own_work_dir:
            self.status.event(f"work dir kept: {self.work_dir} (logs in {self.work_dir}/logs)",
                              always=True)
