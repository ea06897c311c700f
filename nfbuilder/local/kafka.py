"""Numaflow's built-in Kafka source and sink, for the embedded engine (librdkafka via
``confluent-kafka``, the same client library as Numaflow's Rust data plane).

The source is a consumer in the manifest's consumer group ``<doc>-<vertex>``, reading from the
earliest offset with auto-commit off. A partition's offset is committed only once every record
before it is done (:class:`OffsetTracker`), so a crash redelivers, never loses. The sink produces
each message's value with its keys joined by ``:`` as the record key (``setKey: true``) and the
``__key_len``/``__key_<i>`` headers, as numa does, and reports a message delivered only after the
broker acknowledged it.

librdkafka calls block, so each consumer/producer is owned by one worker thread and the engine
awaits it::

    consumer = await KafkaConsumer.open(vertex)   # a KafkaSourceVertex of the plan
    records = await consumer.poll(500, timeout_ms=100)
    consumer.tracker.done(records[0].partition, records[0].offset)
    await consumer.commit()
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import attrs

from nfbuilder.local.process import Replica, ReplicaSpec
from nfbuilder.local.rpc import Outgoing
from nfbuilder.plan import KafkaSinkVertex, KafkaSourceVertex

log = logging.getLogger("nfbuilder.kafka")
T = TypeVar("T")

#: how long start-up waits for the brokers to answer a metadata request
CONNECT_TIMEOUT_S = 10.0
#: how long one sink batch waits for its delivery reports before counting them as failed
FLUSH_TIMEOUT_S = 10.0

# Numaflow's source defaults (pipeline-spec §10), except the session timeout: the engine is one
# process on one machine, and a 45 s session makes a restarted consumer (and a tansu broker's
# first JoinGroup) wait tens of seconds before its partitions are assigned.
CONSUMER_DEFAULTS: dict[str, str] = {
    "auto.offset.reset": "earliest",
    "enable.auto.commit": "false",
    "session.timeout.ms": "6000",
    "heartbeat.interval.ms": "1000",
}
PRODUCER_DEFAULTS: dict[str, str] = {
    "message.timeout.ms": "5000",
    "client.id": "nfbuilder-kafka-sink",
}


class KafkaUnavailable(Exception):
    """The brokers cannot be reached, or the topic does not exist there."""


def _kafka() -> Any:
    try:
        import confluent_kafka
    except ImportError:
        raise KafkaUnavailable(
            "the embedded engine needs the confluent-kafka package for Kafka sources and sinks; "
            "install it with: pip install 'nfbuilder[kafka]'"
        ) from None
    return confluent_kafka


def consumer_config(v: KafkaSourceVertex) -> dict[str, str]:
    """librdkafka settings of the consumer of source vertex ``v`` (its manifest's group)."""
    return {**CONSUMER_DEFAULTS, "bootstrap.servers": ",".join(v.brokers),
            "group.id": v.consumer_group}


def producer_config(v: KafkaSinkVertex) -> dict[str, str]:
    """librdkafka settings of the producer of sink vertex ``v``, with the manifest's ones."""
    return {**PRODUCER_DEFAULTS, **dict(v.producer), "bootstrap.servers": ",".join(v.brokers)}


@attrs.frozen
class KafkaRecord:
    """One consumed record; ``offset_id`` is the transformer request id numa would send."""

    topic: str
    partition: int
    offset: int
    value: bytes
    keys: tuple[str, ...]
    event_time_ns: int
    headers: dict[str, str] = attrs.field(factory=dict, hash=False)

    @property
    def offset_bytes(self) -> bytes:
        return f"{self.topic}:{self.partition}:{self.offset}".encode()

    @property
    def offset_id(self) -> str:
        """``<base64(topic:partition:offset)>-<partition>``."""
        return f"{base64.b64encode(self.offset_bytes).decode()}-{self.partition}"


def parse_offset(offset: bytes) -> tuple[str, int, int]:
    """``b"topic:0:42"`` -> ``("topic", 0, 42)`` (topics cannot contain ``:``)."""
    topic, partition, number = offset.decode().rsplit(":", 2)
    return topic, int(partition), int(number)


class OffsetTracker:
    """Per partition, the lowest offset not yet done: what may be committed.

        t = OffsetTracker(); t.seen(0, 5); t.seen(0, 6); t.done(0, 6)
        t.commit_points()   # {0: 5}: record 5 is still in flight
    """

    def __init__(self) -> None:
        self._pending: dict[int, set[int]] = {}
        self._next: dict[int, int] = {}  # one past the highest offset seen
        self._committed: dict[int, int] = {}

    def seen(self, partition: int, offset: int) -> None:
        self._pending.setdefault(partition, set()).add(offset)
        self._next[partition] = max(self._next.get(partition, 0), offset + 1)

    def done(self, partition: int, offset: int) -> None:
        self._pending.get(partition, set()).discard(offset)

    def commit_points(self) -> dict[int, int]:
        """Partitions whose committable offset moved since the last :meth:`committed`."""
        out = {}
        for partition, nxt in self._next.items():
            pending = self._pending.get(partition)
            point = min(pending) if pending else nxt
            if point > self._committed.get(partition, -1):
                out[partition] = point
        return out

    def committed(self, points: Mapping[int, int]) -> None:
        self._committed.update(points)


class _Worker:
    """One thread that owns a librdkafka handle: every call on it runs there, one at a time."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False)


def _check_topic(client: Any, topic: str, brokers: Sequence[str], what: str) -> None:
    """Fail early, with what to do, when the brokers are down or the topic is missing."""
    ck = _kafka()
    where = ",".join(brokers)
    try:
        meta = client.list_topics(topic, timeout=CONNECT_TIMEOUT_S)
    except ck.KafkaException as exc:
        raise KafkaUnavailable(
            f"{what}: cannot reach the Kafka brokers {where} within {CONNECT_TIMEOUT_S:g} s "
            f"({exc.args[0]}); start the broker or fix the brokers argument"
        ) from None
    info = meta.topics.get(topic)
    if info is None or info.error is not None:
        raise KafkaUnavailable(
            f"{what}: topic {topic!r} is not available on {where} "
            f"({info.error if info is not None else 'not in the metadata'}); create it "
            "(e.g. kafka-topics.sh --create --topic ...) or fix the topic argument"
        )


class KafkaConsumer:
    """A consumer of one topic in its consumer group; see the module docstring."""

    def __init__(self, spec: KafkaSourceVertex, consumer: Any, worker: _Worker) -> None:
        self.spec = spec
        self.tracker = OffsetTracker()
        self._consumer = consumer
        self._worker = worker
        self._closed = False

    @classmethod
    async def open(cls, spec: KafkaSourceVertex) -> KafkaConsumer:
        """Connect, check the topic exists and subscribe (partitions are assigned on poll)."""
        ck = _kafka()
        worker = _Worker(f"kafka-{spec.name}")

        def create() -> Any:
            consumer = ck.Consumer(consumer_config(spec))
            try:
                _check_topic(consumer, spec.topic, spec.brokers, f"Kafka source {spec.name!r}")
            except BaseException:
                consumer.close()
                raise
            consumer.subscribe([spec.topic])
            return consumer

        try:
            consumer = await worker.run(create)
        except BaseException:
            worker.shutdown()
            raise
        return cls(spec, consumer, worker)

    async def poll(self, max_records: int, timeout_ms: int) -> list[KafkaRecord]:
        """Up to ``max_records`` records (fewer after ``timeout_ms``); each is tracked as seen."""
        messages = await self._worker.run(self._consumer.consume, max_records, timeout_ms / 1000)
        records = []
        for m in messages:
            if m.error() is not None:
                log.warning("Kafka source %s: %s", self.spec.name, m.error())
                continue
            kind, ms = m.timestamp()
            key = m.key()
            records.append(KafkaRecord(
                m.topic(), m.partition(), m.offset(), m.value() or b"",
                (key.decode("utf-8", "replace"),) if key else (),
                ms * 1_000_000 if kind and ms >= 0 else time.time_ns(),
                {k: (v or b"").decode("utf-8", "replace") for k, v in (m.headers() or [])},
            ))
            self.tracker.seen(m.partition(), m.offset())
        return records

    async def commit(self) -> None:
        """Commit every partition whose done prefix grew (synchronously, on the broker)."""
        points = self.tracker.commit_points()
        if not points or self._closed:
            return
        ck = _kafka()
        offsets = [ck.TopicPartition(self.spec.topic, p, o) for p, o in points.items()]
        try:
            await self._worker.run(lambda: self._consumer.commit(offsets=offsets,
                                                                 asynchronous=False))
        except ck.KafkaException as exc:
            # Not fatal: the next commit carries the same (or a later) offset.
            log.warning("Kafka source %s: commit failed: %s", self.spec.name, exc)
            return
        self.tracker.committed(points)

    async def close(self) -> None:
        """Commit what is done, leave the group and release the thread."""
        if self._closed:
            return
        await self.commit()
        self._closed = True
        try:
            await self._worker.run(self._consumer.close)
        finally:
            self._worker.shutdown()


class KafkaSinkClient:
    """Produces sink batches to the topic; same ``write`` contract as the gRPC ``SinkClient``.

        client = await KafkaSinkClient.open(spec)
        outcome = await client.write([SinkDatum("v-1-0", b"value", ("key",))])
        outcome["v-1-0"]    # (True, "") once the broker acknowledged it
    """

    def __init__(self, spec: KafkaSinkVertex, producer: Any, worker: _Worker) -> None:
        self.spec = spec
        self._producer = producer
        self._worker = worker

    @classmethod
    async def open(cls, spec: KafkaSinkVertex) -> KafkaSinkClient:
        ck = _kafka()
        worker = _Worker(f"kafka-{spec.name}")

        def create() -> Any:
            producer = ck.Producer(producer_config(spec))
            _check_topic(producer, spec.topic, spec.brokers, f"Kafka sink {spec.name!r}")
            return producer

        try:
            producer = await worker.run(create)
        except BaseException:
            worker.shutdown()
            raise
        return cls(spec, producer, worker)

    async def write(self, batch: Sequence[Outgoing]) -> dict[str, tuple[bool, str]]:
        """Produce the batch, flush, return ``{id: (delivered, error)}``."""
        return await self._worker.run(self._write, list(batch))

    def _write(self, batch: list[Outgoing]) -> dict[str, tuple[bool, str]]:
        ck = _kafka()
        outcome: dict[str, tuple[bool, str]] = {}

        def report(id: str) -> Callable[[Any, Any], None]:
            def on_delivery(err: Any, _msg: Any) -> None:
                outcome[id] = (err is None, "" if err is None else str(err))
            return on_delivery

        for d in batch:
            key, headers = record_key_and_headers(d, self.spec.set_key)
            while True:
                try:
                    self._producer.produce(self.spec.topic, value=d.value, key=key,
                                           headers=headers, on_delivery=report(d.id))
                    break
                except BufferError:  # librdkafka's local queue is full: let it drain
                    self._producer.poll(0.05)
                except ck.KafkaException as exc:
                    outcome[d.id] = (False, str(exc))
                    break
        left = self._producer.flush(FLUSH_TIMEOUT_S)
        for d in batch:
            outcome.setdefault(d.id, (False, f"no delivery report within {FLUSH_TIMEOUT_S:g} s "
                                             f"({left} message(s) still queued)"))
        return dict(outcome)

    async def close(self) -> None:
        try:
            await self._worker.run(self._producer.flush, FLUSH_TIMEOUT_S)
        finally:
            self._worker.shutdown()


def record_key_and_headers(d: Outgoing, set_key: bool) -> tuple[bytes | None, list[Any]]:
    """As numa's Kafka sink writes a message: the keys joined with ``:`` as the record key
    (with ``setKey``), the message headers plus ``__key_len`` and ``__key_<i>``."""
    headers = [(k, v.encode()) for k, v in (d.headers or {}).items()]
    headers.append(("__key_len", str(len(d.keys)).encode()))
    headers += [(f"__key_{i}", k.encode()) for i, k in enumerate(d.keys)]
    key = ":".join(d.keys).encode() if set_key and d.keys else None
    return key, headers


class KafkaSinkReplica(Replica):
    """A built-in Kafka sink seen by the engine as a sink replica without a process: messages
    are queued and written in batches exactly as for a user-defined sink."""

    def __init__(self, spec: ReplicaSpec, sink: KafkaSinkVertex, work_dir: Path,
                 index: int) -> None:
        super().__init__(spec, work_dir, {}, index)
        self.sink = sink

    async def start(self) -> None:
        self.client = await KafkaSinkClient.open(self.sink)
        self.ready.set()

    async def stop(self, grace_s: float = 5.0) -> None:
        self.ready.clear()
        client, self.client = self.client, None
        if client is not None:
            await client.close()
