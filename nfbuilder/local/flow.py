"""How the engine moves messages: routing between vertices and the source, map and sink workers.

A source message gets a :class:`Token`; every message derived from it shares that token, and the
source offset is acked once the count drops to zero (all written by a sink or dropped). Routing
follows the plan's edges: tag conditions, DROP, and a key hash into the partitions of an ordered
vertex. A replica that fails a call keeps the message for redelivery and reports the failure to the
supervisor through ``on_failure``.

::

    flow = Flow(vertices, replicas, read_batch=500, read_timeout_ms=100,
                on_failure=supervisor.failed)
    task = asyncio.ensure_future(flow.map_worker(replicas["double"][0]))
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import logging
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from nfbuilder.local.clients import ClientError
from nfbuilder.local.process import Replica
from nfbuilder.plan import (
    DROP,
    Edge,
    Router,
    SinkVertex,
    UserSourceVertex,
    Vertex,
    drop_reason,
    output_id,
    partition_of,
)

log = logging.getLogger("nfbuilder.engine")


#: JetStream's duplicate window as numa's controller configures the ISB streams
#: (``stream.duplicates: 60s``, config/base/controller-manager/numaflow-controller-config.yaml)
DUPLICATE_WINDOW_S = 60.0
#: at most this many ids are remembered (about 100 bytes each), whatever the window says
MAX_REMEMBERED_IDS = 200_000


class Token:
    """Counts the live messages derived from one source message; acks it at zero. ``tally`` is
    its pipeline's :class:`Tally`."""

    __slots__ = ("count", "offset", "src", "tally")

    def __init__(self, src: SourceState, offset: tuple[bytes, int]) -> None:
        self.src, self.offset, self.count = src, offset, 1
        self.tally = src.tally
        src.open[offset] = self

    def add(self, n: int) -> None:
        self.count += n
        if self.count <= 0:
            self.src.open.pop(self.offset, None)
            self.src.done.append(self.offset)


@attrs.define(slots=True)
class Msg:
    """One message in flight between two vertices; event time, watermark and headers come from
    its source message, as numa carries them through maps."""

    id: str
    value: bytes
    keys: tuple[str, ...]
    event_time_ns: int
    user_metadata: Any
    token: Token
    watermark_ns: int | None = None
    headers: Any = None


@attrs.define
class Tally:
    """What became of one pipeline's messages: source messages that ``entered``; messages
    ``delivered`` by a sink, ``filtered`` (a step returned None), ``dropped`` by a rule
    (an undeclared partition key: ``sample`` is one) and ``dead_lettered``. ``lost`` is
    counted at the end: source messages not fully processed."""

    pipeline: str
    entered: int = 0
    delivered: int = 0
    filtered: int = 0
    dropped: int = 0
    dead_lettered: int = 0
    sample: str | None = None  # "step 'x', key 'z'" of one rule drop
    lost: int = 0

    def line(self) -> str:
        drops = f"{self.dropped} dropped by rule"
        if self.dropped:
            drops += f" (e.g. {self.sample})"
        return (f"pipeline {self.pipeline!r}: {self.entered} entered, {self.delivered} "
                f"delivered, {self.filtered} filtered, {drops}, {self.dead_lettered} "
                f"dead-lettered, {self.lost} lost")


@attrs.define
class SourceState:
    """A source replica (with its transformer replica, if it has one), its pipeline's tally,
    the offsets whose messages are all done (to ack on the next read), and its watermark: the
    oldest event time of its latest read, never going back."""

    replica: Replica
    tally: Tally
    transformer: Replica | None = None
    done: list[tuple[bytes, int]] = attrs.Factory(list)
    watermark_ns: int = -1
    #: offsets read whose messages are not all done yet, to nack if the run stops first
    open: dict[tuple[bytes, int], Token] = attrs.Factory(dict)

    def advance(self, event_times: list[int]) -> None:
        if event_times:
            self.watermark_ns = max(self.watermark_ns, min(event_times))


@attrs.frozen
class SourceResult:
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

    @property
    def event_time_ns(self) -> int:
        return self.record.event_time_ns  # type: ignore[no-any-return]


class DeadLetterFile:
    """Where the engine writes dead letters: one JSON object per line, appended as they come
    (the file is made at the first one)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._file: Any = None

    def write(self, record: bytes) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")  # noqa: SIM115 - kept open for the run
        self._file.write(record if record.endswith(b"\n") else record + b"\n")
        self._file.flush()
        self.count += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def transformed_times(outs: Any) -> list[int]:
    """The event times a source's transformer gave its records (``outs``: the results of each),
    DROPs left out: numa publishes a source's watermark from these, after the transformer
    (rust/numaflow-core/src/source.rs v1.8.3: ``generate_and_publish_source_watermark`` after
    ``transform_batch``)."""
    return [o.event_time_ns for results in outs for o in results if DROP not in o.tags]


def child_prefix(producer: str, parent: str) -> str:
    """The ids of the results ``producer`` made of message ``parent`` without their index
    (``output_id``'s ``<producer>-<offset>-``, the hash of ``parent``'s id standing for numa's
    input offset): the same when ``parent`` is processed again."""
    return output_id(producer, hashlib.blake2b(parent.encode(), digest_size=8).hexdigest(), "")


class Flow:
    """Routes results along the plan's edges and runs the workers that drive each replica.

    ``vertices`` and ``replicas`` are the engine's own dicts (filled while it builds); ``edges``
    (vertex -> its out-edges) is filled by the engine too. ``on_failure(replica, exc)`` is
    called when a call fails.
    """

    def __init__(self, vertices: dict[str, Vertex], replicas: dict[str, list[Replica]], *,
                 read_batch: int, read_timeout_ms: int,
                 on_failure: Callable[[Replica, BaseException], None]) -> None:
        self.vertices = vertices
        self.replicas = replicas
        self.edges: dict[str, list[Edge]] = {}
        self._routers: dict[str, Router] = {}
        self._targets: dict[str, tuple[list[Replica] | None, bool]] = {}
        self.sources: list[SourceState] = []
        self.read_batch = read_batch
        self.read_timeout_ms = read_timeout_ms
        self.on_failure = on_failure
        self.delivered = 0
        self.entered = 0
        self.last_move = time.monotonic()
        #: set by the engine's drain: sources stop reading
        self.draining = False
        #: the states of the Kafka sources (consumed by the engine itself; ``sources`` are
        #: those with a source process)
        self.kafka_states: list[SourceState] = []
        #: pipeline name -> its tally
        self.tallies: dict[str, Tally] = {}
        #: the dead-letter sink vertices (the engine writes their messages to ``dead_letters``)
        self.dead_letter_vertices: set[str] = set()
        self.dead_letters: DeadLetterFile | None = None
        #: ids of the user sources' messages written within :data:`DUPLICATE_WINDOW_S`,
        #: oldest first in ``_written_order``
        self._written: set[str] = set()
        self._written_order: collections.deque[tuple[float, str]] = collections.deque()
        #: source messages read again within the window and dropped (acked) as duplicates
        self.duplicates = 0

    def tally(self, pipeline: str) -> Tally:
        found = self.tallies.get(pipeline)
        if found is None:
            found = self.tallies[pipeline] = Tally(pipeline)
        return found

    @property
    def states(self) -> list[SourceState]:
        """Every source's state."""
        return [*self.sources, *self.kafka_states]

    def open_count(self) -> int:
        """Source messages read whose messages are not all done (delivered, dropped...)."""
        return sum(len(s.open) for s in self.states)

    def in_flight(self) -> int:
        """Messages queued or waiting for redelivery, over all replicas."""
        return sum(
            r.pending for reps in self.replicas.values() for r in reps
        )

    def router(self, vertex: str) -> Router:
        found = self._routers.get(vertex)
        if found is None:
            found = self._routers[vertex] = Router(self.edges.get(vertex, ()))
        return found

    def _target(self, dst: str) -> tuple[list[Replica] | None, bool]:
        """Where messages for vertex ``dst`` go: ``(its replicas, whether it is ordered)``, or
        ``(None, True)`` for the dead letters (the engine writes them) and ``(None, False)`` for
        a vertex without replicas (a blackhole); worked out once per vertex."""
        if dst in self.dead_letter_vertices:
            found: tuple[list[Replica] | None, bool] = (None, True)
        else:
            reps = self.replicas.get(dst)
            found = (reps, reps is not None and self.vertices[dst].ordered)
        self._targets[dst] = found
        return found

    def collect(self, vertex: str, parent_id: str, token: Token, results: Any,
                event_time_ns: int | None, watermark_ns: int | None, headers: Any,
                out: dict[Replica, list[Msg]]) -> None:
        """Add each of ``results`` (of ``vertex``, made of message ``parent_id``) to ``out``
        (replica -> its new messages), along the edges its tags select; what goes nowhere is
        counted in the pipeline's tally.

        A map's results take their parent's ``event_time_ns`` (and its watermark and headers);
        a source's (or transformer's) have their own (``event_time_ns`` None)."""
        tally = token.tally
        if not results:  # consumed, no output: the message is done
            tally.filtered += 1
            token.add(-1)
            return
        router = self.router(vertex)
        targets = self._targets
        prefix = ""
        added = 0
        for i, r in enumerate(results):
            tags = r.tags
            dsts = router.destinations(tags) if tags else router.untagged
            if not dsts:
                reason = drop_reason(r.value) if DROP in tags else None
                if reason is None:
                    tally.filtered += 1
                else:
                    tally.dropped += 1
                    tally.sample = tally.sample or f"step {reason['step']!r}, key " \
                                                   f"{reason['key']!r}"
                continue
            if not prefix:
                prefix = child_prefix(vertex, parent_id)
            msg_id = f"{prefix}{i}"
            for dst in dsts:
                target = targets.get(dst)
                if target is None:
                    target = self._target(dst)
                reps, ordered = target
                if reps is None:  # the dead letters, or a blackhole
                    if ordered:
                        assert self.dead_letters is not None
                        self.dead_letters.write(r.value)
                        tally.dead_lettered += 1
                    continue
                keys = r.keys  # a tuple: every result type the engine reads has one
                # numa routes to an ordered vertex by key, else shards by the message
                n = len(reps)
                if n == 1:
                    rep = reps[0]
                elif ordered:
                    rep = reps[partition_of(keys, n)]
                else:
                    rep = reps[zlib.crc32(msg_id.encode()) % n]
                msg = Msg(msg_id, r.value, keys,
                          r.event_time_ns if event_time_ns is None else event_time_ns,
                          r.user_metadata, token, watermark_ns, headers)
                found = out.get(rep)
                if found is None:
                    out[rep] = [msg]
                else:
                    found.append(msg)
                added += 1
        token.add(added - 1)

    async def deliver(self, out: dict[Replica, list[Msg]]) -> None:
        """Queue what :meth:`collect` gathered, after a batch was read or answered (something
        moved, even when nothing goes on)."""
        self.last_move = time.monotonic()
        for rep, msgs in out.items():
            await rep.put_many(msgs)

    async def _batch(self, rep: Replica) -> list[Msg]:
        """The messages waiting for ``rep`` (:meth:`_waiting`); waits for at least one."""
        while True:
            await rep.ready.wait()
            batch = self._waiting(rep)
            if batch:
                return batch
            await rep.arrival(0.2)

    def _waiting(self, rep: Replica) -> list[Msg]:
        """The messages waiting for ``rep``, up to ``read_batch``, due redeliveries first, as
        numa reads a batch (JetStream redelivers only after ackWait: ``--redelivery-delay``)."""
        limit = self.read_batch
        batch: list[Msg] = []
        if rep.redeliver and rep.redelivery_due():
            redeliver = rep.redeliver
            while redeliver and len(batch) < limit:
                batch.append(redeliver.popleft())
        if len(batch) < limit and rep.queue:
            batch += rep.take(limit - len(batch))
        return batch

    async def _call_map(self, rep: Replica, batch: list[Msg], *, batch_mode: bool) -> Any:
        """The map results of each of ``batch``'s messages (sent together: in unary mode, or as
        one batch-mode batch), or None when the replica failed (the caller puts the batch back
        for redelivery: it knows where it belongs among the others)."""
        now = time.monotonic()
        busy = rep.busy
        for m in batch:
            busy[m.id] = now
        try:
            client = rep.connected()
            return await (client.map_batch(batch) if batch_mode else client.map_many(batch))
        except ClientError as exc:
            self.on_failure(rep, exc)
            return None
        finally:
            for m in batch:
                busy.pop(m.id, None)

    async def transform(self, rep: Replica,
                        items: list[tuple[str, Any, bytes, int, Any]]) -> list[Any]:
        """The transformer results of source records (``(id, keys, value, event_time_ns,
        headers)``, sent together), retried until the transformer answers them (numa retries
        a record until it does)."""
        if not items:
            return []
        busy = rep.busy
        while True:
            await rep.ready.wait()
            now = time.monotonic()
            for item in items:
                busy[item[0]] = now
            try:
                return await rep.connected().transform_many(items)  # type: ignore[no-any-return]
            except ClientError as exc:
                self.on_failure(rep, exc)
                await asyncio.sleep(0.05)  # a stopping replica stays "ready": do not spin
            finally:
                for item in items:
                    busy.pop(item[0], None)

    async def batch_worker(self, rep: Replica) -> None:
        """An ordered vertex in batch mode, as numa drives it: the messages waiting (up to
        ``read_batch``, redeliveries first) go as one batch; the next batch goes when every
        message of this one is answered; results are routed in the batch's order.

        The next batch goes out before this one's results are routed, so the vertex works on
        it meanwhile; the results still go downstream batch after batch, each in order."""
        batch: list[Msg] = []
        call: asyncio.Future[Any] | None = None
        while True:
            if call is None:
                batch = await self._batch(rep)
                call = asyncio.ensure_future(self._call_map(rep, batch, batch_mode=True))
            outs = await call
            done, call = batch, None
            if outs is None:  # failed: the batch goes first when the replica is ready again
                rep.redeliver.extendleft(reversed(done))
                continue
            if rep.ready.is_set():
                batch = self._waiting(rep)
                if batch:
                    call = asyncio.ensure_future(self._call_map(rep, batch, batch_mode=True))
            await self._route_answered(rep, done, outs)

    async def _route_answered(self, rep: Replica, batch: list[Msg], outs: list[Any]) -> None:
        """Route ``outs``, the results ``rep`` answered for each of ``batch``'s messages, in the
        batch's order; both map workers end a call this way."""
        vertex = rep.spec.vertex
        out: dict[Replica, list[Msg]] = {}
        collect = self.collect  # one look-up per batch, not per message
        for m, results in zip(batch, outs, strict=True):
            collect(vertex, m.id, m.token, results, m.event_time_ns, m.watermark_ns,
                    m.headers, out)
        rep.processed += len(batch)
        await self.deliver(out)

    async def map_worker(self, rep: Replica) -> None:
        """Up to ``in_flight`` requests at once; results are routed in arrival order, so an
        ordered vertex downstream sees each key's messages in the order they came. A replica
        serving batch mode (every ordered vertex) gets :meth:`batch_worker`."""
        if rep.spec.kind == "batchmap":
            await self.batch_worker(rep)
            return
        # the batches sent, oldest first, each one's results routed once it is all answered:
        # at most four taken from the queue at a time (one routed, two waiting, one being
        # sent; each up to ``read_batch``; the client lets ``in_flight`` requests out at once).
        # Fewer starve the vertex: with one waiting the word count runs about 8 % slower.
        calls: asyncio.Queue[tuple[list[Msg], asyncio.Future[Any]]] = asyncio.Queue(2)

        async def route_in_order() -> None:
            while True:
                batch, call = await calls.get()
                outs = await call
                if outs is None:  # failed: redelivered after the older failed batches
                    rep.redeliver.extend(batch)
                    continue
                await self._route_answered(rep, batch, outs)

        router = asyncio.ensure_future(route_in_order())
        # the routing task failing (a bug) ends this worker with its error, not in a wait
        worker = asyncio.current_task()
        failed: list[BaseException] = []

        def router_ended(task: asyncio.Future[None]) -> None:
            error = None if task.cancelled() else task.exception()
            if error is not None and worker is not None:
                failed.append(error)
                worker.cancel()

        router.add_done_callback(router_ended)
        try:
            while True:
                batch = await self._batch(rep)
                await calls.put((batch, asyncio.ensure_future(
                    self._call_map(rep, batch, batch_mode=False))))
        except asyncio.CancelledError:
            if failed:
                raise failed[0] from None
            raise
        finally:
            router.cancel()

    async def sink_worker(self, rep: Replica) -> None:
        """Write batches of up to ``read_batch`` messages; retry failed writes with the sink's
        backoff (the manifest's ``retryStrategy``), for as long as they fail."""
        vertex = self.vertices[rep.spec.vertex]
        assert isinstance(vertex, SinkVertex) and vertex.retry is not None, vertex  # the planner's
        retry = vertex.retry
        backoff = retry.interval_s
        while True:
            batch = await self._batch(rep)
            while batch:
                try:
                    outcome = await rep.connected().write(batch)
                except ClientError as exc:
                    rep.redeliver.extendleft(reversed(batch))
                    self.on_failure(rep, exc)
                    break
                failed = []
                for m in batch:
                    if outcome[m.id][0]:
                        m.token.tally.delivered += 1
                        m.token.add(-1)
                    else:
                        failed.append(m)
                done = len(batch) - len(failed)
                rep.processed += done
                self.delivered += done
                self.last_move = time.monotonic()
                if failed:
                    log.debug("%s: %d writes failed (%s); retrying", rep.spec.label, len(failed),
                              outcome[failed[0].id][1])
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * retry.factor, retry.cap_s)
                else:
                    backoff = retry.interval_s
                batch = failed

    async def source_worker(self, src: SourceState) -> None:
        """Ack what is done, read a batch, route it; until the engine drains."""
        rep = src.replica
        dedup = isinstance(self.vertices[rep.spec.vertex], UserSourceVertex)
        while not self.draining:
            await rep.ready.wait()
            try:
                client = rep.connected()
                if src.done:
                    done, src.done = src.done, []
                    await client.ack(done)
                records = await client.read(self.read_batch, self.read_timeout_ms)
            except ClientError as exc:
                self.on_failure(rep, exc)
                continue
            vertex = rep.spec.vertex
            offsets = [base64.b64encode(r.offset).decode() for r in records]
            transformer = src.transformer
            if transformer is not None:  # numa sends each record through it, concurrently
                outs = await self.transform(transformer, [
                    (f"{b64}-{r.partition_id}", r.keys, r.payload, r.event_time_ns,
                     r.headers or None) for b64, r in zip(offsets, records, strict=True)])
                transformer.processed += len(records)
                src.advance(transformed_times(outs))
            else:
                src.advance([r.event_time_ns for r in records])
            out: dict[Replica, list[Msg]] = {}
            for i, r in enumerate(records):
                msg_id = f"{vertex}-{offsets[i]}-0"
                # only a user source may read a record again (TCP offsets never repeat)
                if dedup and self._duplicate(msg_id):
                    src.done.append((r.offset, r.partition_id))
                    continue
                results = outs[i] if transformer is not None else [SourceResult(r)]
                self.enter(src, rep, (r.offset, r.partition_id), msg_id, results,
                           r.headers or None, out)
            if records:
                await self.deliver(out)

    def enter(self, src: SourceState, rep: Replica, offset: tuple[bytes, int], msg_id: str,
              results: Any, headers: Any, out: dict[Replica, list[Msg]]) -> None:
        """A source message read by ``rep``, as ``results`` (its transformer's, or itself):
        counted, given the token that acks ``offset`` once all its messages are done, and
        collected into ``out`` (for :meth:`deliver`)."""
        token = Token(src, offset)
        self.entered += 1
        src.tally.entered += 1
        rep.processed += 1
        self.collect(rep.spec.vertex, msg_id, token, results, None, src.watermark_ns, headers,
                     out)

    def _duplicate(self, msg_id: str) -> bool:
        """Whether a source message with this id was written within the last
        :data:`DUPLICATE_WINDOW_S`: numa publishes each message to the ISB with its id as the
        JetStream message id, and JetStream drops a second one within its ``duplicates``
        window, so a record a source reads again (a restarted user source resuming from its
        last ack) is written once and its offset acked."""
        now = time.monotonic()
        written, order = self._written, self._written_order
        while order and (now - order[0][0] > DUPLICATE_WINDOW_S
                         or len(order) > MAX_REMEMBERED_IDS):
            written.discard(order.popleft()[1])
        if msg_id in written:
            self.duplicates += 1
            return True
        written.add(msg_id)
        order.append((now, msg_id))
        return False

    async def ack_leftovers(self) -> None:
        """Ack the offsets done since the sources' last read, and nack those whose messages a
        stopping run cancelled, as numa does for writes cancelled at shutdown: the source keeps
        them for a later read instead of losing them."""
        for src in self.sources:
            client = src.replica.client
            if client is None:
                continue
            done, src.done = src.done, []
            cancelled = list(src.open)
            with contextlib.suppress(ClientError):
                if done:
                    await client.ack(done)
                if cancelled:
                    await client.nack(cancelled)
        self.settle()

    def settle(self) -> None:
        """The run is over: each source message not fully processed counts as lost in its
        pipeline's tally (once: its token is forgotten)."""
        for src in self.states:
            for token in src.open.values():
                token.tally.lost += 1
            src.open = {}
