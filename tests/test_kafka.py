"""Kafka sources and sinks on the embedded engine, against a real Kafka-API broker (tansu).

The engine consumes the input topic in the manifest's consumer group, runs the app's decoder in
the source-transformer process, routes through the map processes, produces to the output topic
with the encoder's key as the record key, and commits each partition's done prefix.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from engine_harness import ROOT, until_delivered
from kafka_broker import KafkaBroker, kafka_broker  # noqa: F401  (the fixture)

from apps.data import celsius_kafka as data
from nfbuilder.loader import load_app
from nfbuilder.local import kafka as kafka_mod
from nfbuilder.local.engine import Engine, EngineError, EngineOptions
from nfbuilder.local.kafka import KafkaRecord, OffsetTracker, parse_offset
from nfbuilder.plan import KafkaSourceVertex, PlanOptions

KEYED_APP = '''
import nfbuilder as wallaroo


def application_setup(args):
    source = wallaroo.KafkaSourceConfig(*wallaroo.kafka_parse_source_options(args), decoder)
    sink = wallaroo.KafkaSinkConfig(*wallaroo.kafka_parse_sink_options(args), encoder)
    ab = wallaroo.ApplicationBuilder("Kafka keys")
    ab.new_pipeline("keys", source)
    ab.to(upper)
    ab.to_sink(sink)
    return ab.build()


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    text = bs.decode()
    return None if text == "skip" else text   # None filters the record out (Wallaroo 0.5)


@wallaroo.computation(name="upper")
def upper(text):
    return text.upper()


@wallaroo.encoder
def encoder(text):
    return (text.encode(), None if text == "NOKEY" else text[:1])
'''


def _topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _args(broker: str, in_topic: str, out_topic: str, sink_broker: str | None = None) -> list[str]:
    args = data.kafka_args(broker, in_topic, out_topic)[1:]
    if sink_broker is not None:
        args[args.index("--kafka_sink_brokers") + 1] = sink_broker
    return args


async def _run(app: str, args: list[str], expect: int, work_dir: Path) -> Engine:
    """Start the engine, wait until ``expect`` messages were delivered, drain, stop."""
    return await until_delivered(load_app(app, args), expect, str(work_dir),
                                 PlanOptions(state_store="memory://"), timeout_s=40)


@pytest.fixture(scope="module")
def keyed_app(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("apps") / "kafka_keyed.py"
    path.write_text(KEYED_APP)
    return str(path)


# -- units --------------------------------------------------------------------------------------
def test_offset_id_is_base64_of_topic_partition_offset_then_partition() -> None:
    rec = KafkaRecord("in", 3, 42, b"v", (), 0)
    assert rec.offset_id == base64.b64encode(b"in:3:42").decode() + "-3"
    assert parse_offset(rec.offset_bytes) == ("in", 3, 42)


def test_tracker_commits_only_the_done_prefix() -> None:
    t = OffsetTracker()
    for off in (5, 6, 7):
        t.seen(0, off)
    t.seen(1, 0)
    t.done(0, 6)
    assert t.commit_points() == {0: 5, 1: 0}  # 5 and 1:0 still in flight
    t.committed(t.commit_points())
    assert t.commit_points() == {}  # nothing moved
    t.done(0, 5)
    t.done(1, 0)
    assert t.commit_points() == {0: 7, 1: 1}
    t.done(0, 7)
    assert t.commit_points() == {0: 8, 1: 1}


# -- end to end ---------------------------------------------------------------------------------
def test_celsius_kafka_end_to_end(kafka_broker: KafkaBroker, tmp_path: Path) -> None:  # noqa: F811
    in_topic, out_topic = _topic("celsius-in"), _topic("celsius-out")
    kafka_broker.create_topics(in_topic, out_topic)
    inputs = data.inputs()
    kafka_broker.produce(in_topic, inputs[0])
    args = _args(kafka_broker.address, in_topic, out_topic)
    app = os.path.join(ROOT, "apps", "celsius_kafka.py")

    engine = asyncio.run(_run(app, args, len(inputs[0]), tmp_path))

    records = kafka_broker.consume(out_topic, len(inputs[0]))
    data.validate(data.parse_output([v for _, v in records]), inputs)
    assert all(k is None for k, _ in records), "the encoder returns no key: records have none"
    # The in-process harness gives the same outputs for the same inputs.
    from nfbuilder.testing import run_app

    outs = run_app(app, args, {0: inputs[0]})
    assert [v for _, v in records] == [v for values in outs.values() for v in values]
    # Every input offset was committed for the manifest's consumer group.
    group = f"{engine.graph.docs[0].name}-source"
    assert kafka_broker.committed(group, in_topic) == {0: len(inputs[0])}


def test_keys_become_record_keys_and_filtered_records_are_committed(
    kafka_broker: KafkaBroker, keyed_app: str, tmp_path: Path  # noqa: F811
) -> None:
    in_topic, out_topic = _topic("keys-in"), _topic("keys-out")
    kafka_broker.create_topics(in_topic, out_topic)
    kafka_broker.produce(in_topic, [b"apple", b"skip", b"banana", b"nokey"],
                         keys=[b"in-key", None, None, None])
    engine = asyncio.run(_run(keyed_app, _args(kafka_broker.address, in_topic, out_topic), 3,
                              tmp_path))

    assert kafka_broker.consume(out_topic, 4, timeout_s=3) == [
        (b"A", b"APPLE"), (b"B", b"BANANA"), (None, b"NOKEY")]
    group = f"{engine.graph.docs[0].name}-source"
    assert kafka_broker.committed(group, in_topic) == {0: 4}  # "skip" was dropped, still done


# -- errors -------------------------------------------------------------------------------------
def _start(app: str, args: list[str], work_dir: Path) -> Any:
    async def go() -> None:
        engine = Engine(load_app(app, args), EngineOptions(
            plan=PlanOptions(state_store="memory://"), quiet=True, work_dir=str(work_dir)))
        try:
            await engine.start()
        finally:
            await engine.stop_processes()

    return asyncio.run(go())


def test_unreachable_source_brokers_fail_the_start_with_what_to_do(
    kafka_broker: KafkaBroker, keyed_app: str, tmp_path: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from redis_server import free_port

    monkeypatch.setattr(kafka_mod, "CONNECT_TIMEOUT_S", 1.0)
    out_topic = _topic("out")
    kafka_broker.create_topics(out_topic)
    dead = f"127.0.0.1:{free_port()}"
    with pytest.raises(EngineError) as err:
        _start(keyed_app, _args(dead, "in", out_topic, sink_broker=kafka_broker.address),
               tmp_path)
    msg = str(err.value)
    assert msg.startswith("vertex source did not start: Kafka source 'source': cannot reach the "
                          f"Kafka brokers {dead} within 1 s (")
    assert msg.endswith("); start the broker or fix the brokers argument")


def test_missing_source_topic_fails_the_start_with_what_to_do(
    kafka_broker: KafkaBroker, keyed_app: str, tmp_path: Path,  # noqa: F811
) -> None:
    # (A missing sink topic is auto-created by brokers that allow it, as for Numaflow's sink.)
    missing, out_topic = _topic("missing"), _topic("out")
    kafka_broker.create_topics(out_topic)
    with pytest.raises(EngineError) as err:
        _start(keyed_app, _args(kafka_broker.address, missing, out_topic), tmp_path)
    msg = str(err.value)
    assert msg.startswith(f"vertex source did not start: Kafka source 'source': topic {missing!r} "
                          f"is not available on {kafka_broker.address} (")
    assert msg.endswith("); create it (e.g. kafka-topics.sh --create --topic ...) or fix the "
                        "topic argument")


def test_a_killed_transformer_is_restarted_and_nothing_is_lost(
    kafka_broker: KafkaBroker, keyed_app: str, tmp_path: Path  # noqa: F811
) -> None:
    in_topic, out_topic = _topic("kill-in"), _topic("kill-out")
    kafka_broker.create_topics(in_topic, out_topic)
    kafka_broker.produce(in_topic, [b"apple", b"banana", b"cherry"])

    async def go() -> Engine:
        engine = Engine(load_app(keyed_app, _args(kafka_broker.address, in_topic, out_topic)),
                        EngineOptions(plan=PlanOptions(state_store="memory://"), quiet=True,
                                      work_dir=str(tmp_path)))
        await engine.start()
        try:
            rep = engine.replicas["source"][0]
            assert rep.proc is not None
            rep.proc.kill()  # before the group join completes: records wait for the restart
            deadline = time.monotonic() + 40
            while engine.delivered < 3 and not engine.failure:
                assert time.monotonic() < deadline, f"{engine.delivered}/3 delivered after 40 s"
                await asyncio.sleep(0.05)
            await engine.drain()
        finally:
            await engine.stop_processes()
        return engine

    engine = asyncio.run(go())
    assert engine.failure is None, engine.failure
    assert engine.replicas["source"][0].restarts == 1
    assert [v for _, v in kafka_broker.consume(out_topic, 3)] == [b"APPLE", b"BANANA", b"CHERRY"]


def test_without_confluent_kafka_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "confluent_kafka", None)  # makes the import fail
    spec = KafkaSourceVertex(name="source", works=(), topic="in",
                             brokers=("127.0.0.1:9092",), consumer_group="g")
    with pytest.raises(kafka_mod.KafkaUnavailable) as err:
        asyncio.run(kafka_mod.KafkaConsumer.open(spec))
    assert str(err.value) == (
        "the embedded engine needs the confluent-kafka package for Kafka sources and sinks; "
        "install it with: pip install 'nfbuilder[kafka]'")
