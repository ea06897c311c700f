"""The engine's side of Numaflow's built-in Kafka source and sink.

A Kafka source vertex has no source process: the engine consumes the topic itself, sends each
record through the vertex's transformer process (concurrently, retried until it answers, routed in
record order) and commits the prefix of offsets whose messages are all done. A Kafka sink vertex is
a :class:`~nfbuilder.local.kafka.KafkaSinkReplica` driven by the ordinary sink worker.

::

    sources = KafkaSources(flow)
    await sources.open(v, replicas["in"][0])      # v: the plan's KafkaSourceVertex
    task = asyncio.ensure_future(sources.worker("in"))
    ...
    await sources.close()
"""

from __future__ import annotations

import logging
from pathlib import Path

from nfbuilder.local.flow import Flow, Msg, SourceState, transformed_times
from nfbuilder.local.kafka import KafkaConsumer, KafkaSinkReplica, parse_offset
from nfbuilder.local.process import Replica, ReplicaSpec
from nfbuilder.plan import KafkaSinkVertex, KafkaSourceVertex

log = logging.getLogger("nfbuilder.engine")


def kafka_sink_replica(doc: str, v: KafkaSinkVertex, work_dir: Path,
                       index: int) -> KafkaSinkReplica:
    """The in-engine replica that writes the Kafka sink vertex ``v`` to its topic."""
    spec = ReplicaSpec(doc, v.name, "kafka-sink", 0, ())
    return KafkaSinkReplica(spec, v, work_dir, index)


class KafkaSources:
    """The consumers of the Kafka source vertices, each with its transformer replica."""

    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        self.consumers: dict[str, tuple[KafkaConsumer, SourceState]] = {}

    async def open(self, v: KafkaSourceVertex, transformer: Replica) -> None:
        """Join the consumer group of source vertex ``v``; raises KafkaUnavailable."""
        consumer = await KafkaConsumer.open(v)
        state = SourceState(transformer, self.flow.tally(v.works[0].pipeline_name))
        self.flow.kafka_states.append(state)
        self.consumers[v.name] = (consumer, state)

    async def worker(self, name: str) -> None:
        """Consume, transform (concurrently, routed in record order), commit the done prefix."""
        consumer, src = self.consumers[name]
        flow = self.flow
        rep = src.replica
        while not flow.draining:
            _mark_done(src, consumer)
            await consumer.commit()
            records = await consumer.poll(flow.read_batch, flow.read_timeout_ms)
            outs = await flow.transform(
                rep, [(r.offset_id, r.keys, r.value, r.event_time_ns, r.headers) for r in records])
            src.advance(transformed_times(outs))
            out: dict[Replica, list[Msg]] = {}
            for r, results in zip(records, outs, strict=True):
                flow.enter(src, rep, (r.offset_bytes, r.partition),
                           f"{rep.spec.vertex}-{r.offset_id}", results, r.headers or None, out)
            if records:
                await flow.deliver(out)

    async def close(self) -> None:
        """Commit what is done (after a drain: everything) and leave the consumer groups."""
        for name, (consumer, src) in self.consumers.items():
            _mark_done(src, consumer)
            try:
                await consumer.close()
            except Exception as exc:  # noqa: BLE001 - a broker gone at shutdown is not fatal
                log.warning("Kafka source %s: close failed: %s", name, exc)


def _mark_done(src: SourceState, consumer: KafkaConsumer) -> None:
    """Hand the offsets done since last time to the consumer's commit tracker."""
    done, src.done = src.done, []
    for offset, _ in done:
        _, partition, number = parse_offset(offset)
        consumer.tracker.done(partition, number)
